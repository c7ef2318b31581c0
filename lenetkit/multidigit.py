"""Reading a number: the separate digits of a page (a year, a house number, a code on a form),
found apart and ordered left to right, each framed as MNIST framed its digits.

The pen's strokes (preprocess.stroke_mask) fall into connected pieces; pieces that share columns
are one digit (a 5's loose bar, a 4 drawn in two strokes), and the digits of a number stand on
one line, side by side, each about as tall as the tallest. Touching digits are one piece, so
they read as one digit: write them apart.
"""

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from lenetkit.preprocess import (
    PEN_SHARE,
    check_digit_ink,
    frame_strokes,
    one_digit,
    page_strokes,
    piece_peaks,
    without_lines,
)

# Pieces that share more than this share of the narrower one's columns, one at most this share
# of the taller one's height above the other, are one digit.
SHARED_COLUMNS = 0.25
MAX_PIECE_GAP = 0.5
# A digit of a number is at least this share of the largest one's height, and at most its
# inverse, and holds at least this share of its ink (a 1 holds about a third of an 8's): a dot,
# a dash, a row of specks or a stroke's loose end is not one, nor a line down the page.
MIN_HEIGHT = 0.5
MIN_AREA = 0.15
# Digits at least this share of the image's height mean a crop tight around the number: one of
# them that runs from the top edge to the bottom is a digit, not a page's edge beside it.
TIGHT_CROP = 0.7
# Two neighbouring digits of a number share at least this share of the shorter one's rows (one
# line, allowing for a slant), and stand at most this many heights (the taller's) apart.
SHARED_ROWS = 0.5
MAX_GAP = 2.0
# The most pieces of ink looked at, largest first: enough for a long number's digits in pieces.
MAX_PIECES = 64
# The most digits read in one image: a long code or a phone number, not a page of text.
MAX_DIGITS = 16


def preprocess_number(image: Image.Image, box: int = 20, size: int = 28) -> Tensor:
    """The digits of the number in an image, left to right, each as preprocess_digit prepares
    one digit. An image of one digit gives exactly what preprocess_digit gives.

    Returns float32 (digits, size, size) in [0, 1], before normalization.
    """
    darkness, digits, ink, half_width = page_strokes(image, read_digits)
    check_digit_ink(darkness, np.logical_or.reduce(digits))
    return torch.stack([frame_strokes(darkness, digit, ink, half_width, box, size)
                        for digit in digits])


def read_digits(strokes: np.ndarray, darkness: np.ndarray) -> list[np.ndarray]:
    """The masks of the digits to read: the number's, or for one digit, its pieces as
    preprocess_digit chooses them."""
    kept = without_lines(strokes)  # once, for the number and for one digit
    digits = number_digits(kept, darkness)
    return digits if len(digits) > 1 else one_digit(strokes, darkness, kept)


def number_digits(kept: np.ndarray, darkness: np.ndarray) -> list[np.ndarray]:
    """The masks of the number's digits among `kept`, a page's strokes less the lines across
    the image (without_lines: a digit that a margin line touches or crosses stays), left to
    right: the line of digits through the largest one (none for a blank mask). Its pieces are
    the pen's (PEN_SHARE), as preprocess_digit's are; none runs from side to side, nor from top
    to bottom unless the image is a crop tight around the number (tight_crop)."""
    labels, count = ndimage.label(kept, structure=np.ones((3, 3)))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    peaks = piece_peaks(darkness, labels, count)
    largest = np.argsort(areas)[::-1][:MAX_PIECES]  # a noisy page's specks are not looked at
    boxes = ndimage.find_objects(labels)
    # A speck is small beside the largest piece that does not span the image: a page's edge
    # holds more ink than a small number's 1.
    spans = np.array([rows.stop - rows.start == kept.shape[0]
                      or cols.stop - cols.start == kept.shape[1] for rows, cols in boxes])
    speck = 0.02 * (areas[~spans].max() if not spans.all() else areas.max())
    pieces = [Box.of(rows, cols, [int(index) + 1], areas[index]) for index in largest
              if areas[index] >= speck and peaks[index] >= PEN_SHARE * peaks.max()
              for rows, cols in [boxes[index]]
              # a line across the page (a ruling, a margin, a grid) is no digit of a number
              if cols.stop - cols.start < kept.shape[1]]
    if not tight_crop(pieces, kept.shape[0]):  # nor is a page's edge from top to bottom
        pieces = [piece for piece in pieces if piece.height < kept.shape[0]]
    if not pieces:
        return []
    digits = merged_columns(pieces)
    anchor = max(digits, key=lambda digit: digit.area)  # the digit that preprocess_digit reads
    digits = sorted((digit for digit in digits if digit.area >= MIN_AREA * anchor.area
                     and MIN_HEIGHT <= digit.height / anchor.height <= 1 / MIN_HEIGHT),
                    key=lambda digit: digit.left)
    line = number_line(digits, anchor)
    return [np.isin(labels, digit.labels) for digit in line[:MAX_DIGITS]]


def tight_crop(pieces: list["Box"], height: int) -> bool:
    """Whether the image is a crop tight around a number, whose digits run from its top edge to
    its bottom as a page's edge or a line down the page does: the digits (the pieces joined,
    merged_columns) that do not, if any, are nearly as tall as the image (those holding at least
    MIN_AREA of the largest one's ink: not a dot or a speck)."""
    # The largest is among those shorter too: beside a page's edge, a small number's digits each
    # hold less ink than the edge does.
    shorter = [digit for digit in merged_columns(pieces) if digit.height < height]
    largest = max((digit.area for digit in shorter), default=0)
    return not shorter or max(digit.height for digit in shorter
                              if digit.area >= MIN_AREA * largest) >= TIGHT_CROP * height


class Box:
    """A digit's (or a piece's) bounding box, its labels in the page's pieces and its area."""

    def __init__(self, top: int, bottom: int, left: int, right: int, labels: list[int],
                 area: int) -> None:
        self.top, self.bottom, self.left, self.right = top, bottom, left, right
        self.labels, self.area = labels, area
        self.height, self.width = bottom - top, right - left

    @classmethod
    def of(cls, rows: slice, cols: slice, labels: list[int], area: int) -> "Box":
        return cls(rows.start, rows.stop, cols.start, cols.stop, labels, int(area))

    def joined(self, other: "Box") -> "Box":
        return Box(min(self.top, other.top), max(self.bottom, other.bottom),
                   min(self.left, other.left), max(self.right, other.right),
                   self.labels + other.labels, self.area + other.area)


def shared(start: int, stop: int, other_start: int, other_stop: int, gap: bool = False) -> int:
    """How many places two ranges share: 0 when apart, or with `gap`, minus the gap between."""
    overlap = min(stop, other_stop) - max(start, other_start)
    return overlap if gap else max(0, overlap)


def merged_columns(pieces: list[Box]) -> list[Box]:
    """The pieces joined into digits: any two that share enough columns, one above the other
    and close, until none do."""
    digits: list[Box] = []
    for piece in pieces:
        for index, digit in enumerate(digits):
            if shared(digit.left, digit.right, piece.left, piece.right) \
                    > SHARED_COLUMNS * min(digit.width, piece.width) and \
                    -shared(digit.top, digit.bottom, piece.top, piece.bottom, gap=True) \
                    <= MAX_PIECE_GAP * max(digit.height, piece.height):
                digits[index] = digit.joined(piece)
                break
        else:
            digits.append(piece)
    # A join widens a digit, which may now share columns with another: join again until stable.
    return digits if len(digits) == len(pieces) else merged_columns(digits)


def number_line(digits: list[Box], anchor: Box) -> list[Box]:
    """The digits (sorted left to right) that stand in one line with the `anchor`: each beside
    the next, on its rows and near it. Marks above or below the line are passed over; a wide gap
    ends it."""
    start = digits.index(anchor)
    line = [anchor]
    for step in (1, -1):
        for digit in digits[start + 1:] if step == 1 else reversed(digits[:start]):
            end = line[-1] if step == 1 else line[0]
            if shared(end.top, end.bottom, digit.top, digit.bottom) \
                    < SHARED_ROWS * min(end.height, digit.height):
                continue  # above or below the line
            gap = digit.left - end.right if step == 1 else end.left - digit.right
            if gap > MAX_GAP * max(end.height, digit.height):
                break
            line.insert(len(line) if step == 1 else 0, digit)
    return line
