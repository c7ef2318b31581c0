"""How an image file becomes a model's input: reading it safely, and finding the digit (or
garment) in it, whether it is a clean scan, a drawing or a phone photo of a page; or, for a
CIFAR-10 model, framing a photo as CIFAR-10 framed its own.

A photo of a digit is ink on paper under uneven light. The digit's preprocessing divides
out the page's light (a large-scale estimate of the paper's brightness), separates ink from
paper with a threshold fitted to the image (Otsu's), drops structures thinner than the
pen's strokes (ruling, grid lines, specks) and keeps the digit's connected strokes, then
frames them as MNIST framed its own digits.
"""

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy import ndimage
from torch import Tensor

from lenetkit.errors import UserError

# JPEG files decode at a reduced scale (Pillow's draft mode), so even a 108-megapixel phone photo
# costs a few megabytes; other formats decode whole, and 24 megapixels (a full-resolution camera
# image) keeps that, and its copies, to a few hundred MB.
MAX_JPEG_PIXELS = 120_000_000
MAX_IMAGE_PIXELS = 24_000_000
# A progressive JPEG's decoder visits every block of the image once per scan, however few bytes
# the scan takes, so neither the file's size nor its pixels bound the work: scans times pixels
# does. Encoders write about ten scans; this allows twenty at the largest size, and refuses a
# file that repeats scans to multiply the work.
MAX_JPEG_SCAN_PIXELS = 20 * MAX_JPEG_PIXELS
JPEG_START_OF_SCAN = b"\xff\xda"
# The digit is found at this resolution (the longer side, at most): fine enough for a digit
# that fills a tenth of the photo's height, small enough to take a few milliseconds.
WORK_SIDE = 320
# A digit (with the marks beside it) smaller than this there, in a larger image, is looked at
# again in a crop around it at a finer scale. JPEG files are decoded at this many times
# WORK_SIDE at least, which costs little more than decoding at WORK_SIDE: the entropy-coded data
# is most of the work at any scale.
SMALL_DIGIT_SIDE = 32
JPEG_DETAIL = 2
GRAY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "F")
# Ink is darker than the paper by this much at least (0: paper, 1: black).
MIN_INK_DARKNESS = 0.2
# Paper, in most of the image, at most this bright beside its brightest pixel is a dark ground
# (a dark-mode drawing, a blackboard), whatever the ink's vote said.
DARK_PAPER = 0.25
# The smallest mark that can be a digit, in pixels along its longer side: fewer rows than a
# seven-segment digit needs can't tell one digit from another, and a speck of dust, a stray dot
# or a lone extreme pixel value fits under it.
MIN_DIGIT_SIDE = 5
# A piece of ink from one edge of the image to the other, on average thinner than this share of
# the other side, is a line across the page, not a digit.
LINE_SHARE = 0.05
# The pen's width is measured on the ink that the image's edges do not cut when that holds at
# least this share of the ink.
UNCUT_SHARE = 0.1
# Ink from edge to edge of the image that encloses more holes than this is a grid, not a digit.
GRID_CELLS = 4
# A row or a column of the image at least this share inked is a line from edge to edge.
LINE_FILL = 0.9
# An image at least this transparent (by its mean opacity) is a drawing on nothing, not a page;
# with fewer than this share of its drawn pixels dark, all of it is light ink.
MOSTLY_CLEAR, DARK_ON_CLEAR = 0.5, 0.05
# Strokes narrower than this share of the digit's longer side (a fine pen's; MNIST's pen drew
# about twice as wide) are widened to it. Wider reads more fine-pen digits, and lets more thin
# scribbles pass for digits.
MIN_PEN_SHARE = 0.05
# The digit is the largest mark whose darkest pixel is at least this share of the darkest
# mark's: a pen's stroke, not a shadow's edge.
PEN_SHARE = 0.6
# A hole in the ink is ink too where its level is within this share of the way from its ring's
# ink to white: a blot, not a loop around paper.
BLOT_LEVELS = 0.05
# ... and the ring around it at least this dark on average (a pen's ink, not a grid's line).
MIN_BLOT_DARKNESS = 0.5


class ImageError(UserError):
    """An image file that can't be read, or holds no digit (or garment)."""


def read_image(path: str | Path | BinaryIO, colour: bool = False) -> Image.Image:
    """The first frame of an image file, upright as its EXIF orientation says. JPEG files are
    decoded at a reduced scale near JPEG_DETAIL times WORK_SIDE, colour ones straight to
    luminance (all the digit's and garment's preprocessing uses) unless `colour` is asked for;
    images over the pixel limits are refused unread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limits apply
            with Image.open(path) as image:  # reads the header only
                jpeg = image.format in ("JPEG", "MPO")
                limit = MAX_JPEG_PIXELS if jpeg else MAX_IMAGE_PIXELS
                if image.width * image.height > limit:
                    kind = "JPEG" if jpeg else "non-JPEG"
                    raise ImageError(f"{image.width}x{image.height} pixels is too large to be a "
                                     f"digit (the limit is {limit:,} pixels for {kind} files)")
                if jpeg:
                    check_jpeg_work(image)
                    # Draft mode skips the fine detail, and "L" the colour conversion; decoding
                    # the file's entropy-coded data, which neither skips, is most of what's left.
                    gray = image.mode == "RGB" and not colour
                    fine = JPEG_DETAIL * WORK_SIDE
                    image.draft("L" if gray else image.mode, (fine, fine))
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # a copy otherwise: time, memory
                return image
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except Image.DecompressionBombError:  # Pillow's own limit, far over ours: say ours
        raise ImageError(f"too large to be a digit (the limit is {MAX_IMAGE_PIXELS:,} pixels, "
                         f"{MAX_JPEG_PIXELS:,} for JPEG files)") from None
    except UnidentifiedImageError:  # Pillow's words name its file object: say what it means
        raise ImageError("not a readable image (not a format Pillow reads: give a PNG, JPEG, "
                         "GIF, BMP, TIFF or WebP file)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"not a readable image ({error})") from None


def check_jpeg_work(image: ImageFile.ImageFile) -> None:
    """Refuses (ImageError) a JPEG whose scans times pixels exceed MAX_JPEG_SCAN_PIXELS, from
    its markers, before any decoding."""
    assert image.fp is not None, "an image opened, not yet loaded"
    scans = jpeg_scan_count(image.fp)
    if scans * image.width * image.height > MAX_JPEG_SCAN_PIXELS:
        raise ImageError(f"a JPEG of {scans:,} scans at {image.width}x{image.height} pixels is "
                         f"too much work to decode (the limit is {MAX_JPEG_SCAN_PIXELS:,} "
                         "scans times pixels; encoders write about ten scans)")


def jpeg_scan_count(file: IO[bytes], chunk: int = 2**22) -> int:
    """How many start-of-scan markers a JPEG file holds, counted on its bytes (the coded data
    can't hold one: a 0xFF byte there is always followed by 0x00 or a restart marker). Markers in
    metadata, such as an EXIF thumbnail's, count too: a few more, never fewer. The file's
    position is kept."""
    position, count, previous = file.tell(), 0, b""
    try:
        file.seek(0)
        while block := file.read(chunk):
            joined = np.frombuffer(previous + block, np.uint8)  # a marker split between reads
            # The marker's second byte is rare in coded data, its first (0xFF) common: look for
            # the second, then at the byte before each.
            seconds = np.flatnonzero(joined[1:] == JPEG_START_OF_SCAN[1])
            count += int(np.count_nonzero(joined[seconds] == JPEG_START_OF_SCAN[0]))
            previous = block[-1:]
    finally:
        file.seek(position)
    return count


def to_grayscale(image: Image.Image, side: int | None = None, black: bool = False) -> np.ndarray:
    """Float32 gray levels stretched to [0, 1]; transparent areas count as paper (on_ground). With
    `side`, an image larger than that is first shrunk to fit it. With `black`, the levels keep
    their black (0 stays 0) and only the brightest pixel is stretched to 1: a page's faint marks
    and its shadows stay as faint as the camera saw them."""
    image = on_ground(image)
    if image.mode not in GRAY_MODES:
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")  # 16-bit gray: reduce() takes 32-bit
    if side and max(image.size) >= 2 * side:
        image = image.reduce(max(image.size) // side)
    if side and max(image.size) > side:  # the rest in floats, which keep ink and paper symmetric
        scale = side / max(image.size)
        fit = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.convert("F").resize(fit, Image.Resampling.BOX)
    return stretched(pixel_levels(image), black)


def pixel_levels(image: Image.Image) -> np.ndarray:
    """The image's levels as float32, every one a number (else an ImageError)."""
    levels = np.asarray(image, dtype=np.float32)
    if not np.isfinite(levels).all():
        raise ImageError("the image holds NaN or infinite pixel values")
    return levels


def stretched(gray: np.ndarray, black: bool = False) -> np.ndarray:
    """The levels stretched to [0, 1], from the darkest (or with `black`, from 0) to the
    brightest."""
    low, high = float(gray.min()), float(gray.max())
    low = min(low, 0.0) if black else low
    return (gray - low) / (high - low) if high > low else np.zeros_like(gray)


def on_ground(image: Image.Image) -> Image.Image:
    """The image with its transparent areas as a plain ground: white (paper, or a plain
    background), or black where the image is mostly transparent and all that is drawn on it is
    light (a light digit saved on nothing, as drawing apps and icons save it: white would hide
    it; a card with dark writing on it keeps white); an opaque one as it is."""
    if "a" in image.getbands():  # premultiplied alpha (La, RGBa): Pillow composites only LA, RGBA
        image = image.convert(image.mode.upper())
    if image.mode in GRAY_MODES and image.mode != "L" and "transparency" in image.info:
        return deep_gray_on_ground(image)
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    image = image.convert("RGBA")
    # The vote, on a copy the size the digit is looked for at: averaged with its alpha, so that
    # a thin stroke's colour survives and the clear pixels' hidden colour does not mix in.
    step = max(1, max(image.size) // WORK_SIDE)
    sample = image.convert("RGBa").reduce(step).convert("RGBA") if step > 1 else image
    opacity = np.asarray(sample.getchannel("A"), dtype=np.float32) / 255
    black = light_on_clear(opacity, lambda: np.asarray(sample.convert("L"), np.float32) / 255)
    return Image.alpha_composite(Image.new("RGBA", image.size, "black" if black else "white"),
                                 image)


def light_on_clear(opacity: np.ndarray, levels: Callable[[], np.ndarray]) -> bool:
    """Whether an image of `opacity` (0 or False: clear, up to 1 or True: opaque) is mostly
    clear, and under DARK_ON_CLEAR of what is drawn on it is dark by its `levels` (0: black,
    1: white; asked for only then): light ink on nothing, which wants a black ground."""
    if not 0 < opacity.mean() <= 1 - MOSTLY_CLEAR:
        return False
    return float((levels()[opacity > 0] < 0.5).mean()) < DARK_ON_CLEAR


def deep_gray_on_ground(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit, or float) gray image with one level transparent (a PNG's tRNS) on
    its ground (on_ground's rule), as float levels: Pillow's RGBA would clip its levels at 255
    and paint it white. White and black are 16-bit's own for a 16-bit image, else its brightest
    and darkest (0 unless below). A transparency that is no one level is ignored."""
    levels = pixel_levels(image)
    transparent = image.info["transparency"]
    if type(transparent) not in (int, float) or not (clear := levels == transparent).any():
        return image
    opaque = ~clear if not clear.all() else True  # min and max over these, without a copy
    low, high = ((0.0, 65535.0) if image.mode.startswith("I;16")
                 else (min(float(levels.min(initial=np.inf, where=opaque)), 0.0),
                       float(levels.max(initial=-np.inf, where=opaque))))
    black = light_on_clear(~clear, lambda: (levels - low) / max(high - low, 1e-12))
    if not levels.flags.writeable:  # a float image's levels are Pillow's own (16-bit's a copy)
        levels = levels.copy()
    levels[clear] = low if black else high
    return Image.fromarray(levels)


def preprocess_digit(image: Image.Image, box: int = 20, size: int = 28) -> Tensor:
    """An image of one digit, as MNIST prepared its own: white ink on black, cropped to the
    digit's strokes, the longer side scaled to `box` pixels, centred by centre of mass in
    `size` x `size`.

    Returns float32 (size, size) in [0, 1], before normalization.
    """
    darkness, (strokes,), ink, half_width = page_strokes(image, one_digit)
    check_digit_ink(darkness, strokes)
    return frame_strokes(darkness, strokes, ink, half_width, box, size)


def one_digit(strokes: np.ndarray, darkness: np.ndarray,
              kept: np.ndarray | None = None) -> list[np.ndarray]:
    """The digit to read among a page's strokes, as page_strokes' `find` gives it: its pieces,
    once the lines across the image are taken out (`kept`, if the caller has them: without_lines;
    a digit that a margin line touches or crosses stays). A page of nothing but such lines,
    nothing left where they are taken out, is refused as one; what is left (a blot on a line)
    is the detector's to judge."""
    kept = without_lines(strokes) if kept is None else kept
    return [digit_pieces(kept if kept.any() else strokes, darkness)]


def page_strokes(image: Image.Image,
                 find: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]
                 ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, float]:
    """The page's darkness at WORK_SIDE (ink_darkness), the masks of the digits to read on it
    (`find`, from the pen's strokes, stroke_mask's, and the darkness), all the ink and the
    strokes' half-width. Where those digits are smaller than SMALL_DIGIT_SIDE there and the image
    holds more detail, all of these are a crop's around them at a finer scale, as a person steps
    closer to read a small digit."""
    darkness = ink_darkness(to_grayscale(image, WORK_SIDE, black=True))
    strokes, ink, half_width = stroke_mask(darkness)
    digits = find(strokes, darkness)
    scale = max(image.size) / max(darkness.shape)
    found = bounding_box(np.logical_or.reduce(digits), margin=0)
    if found is None or scale <= 1:
        return darkness, digits, ink, half_width
    if edges_reached(*found, darkness.shape):
        # Ink that the image's edge cuts is as often a shadow's edge as a digit: a small mark
        # within the image, as dark, is looked at closer instead.
        found = small_mark(strokes, darkness, found) or found
    rows, cols = found
    side = max(rows.stop - rows.start, cols.stop - cols.start)
    if side >= SMALL_DIGIT_SIDE:
        return darkness, digits, ink, half_width
    # A margin of the digit's size, and at least half the small side, keeps the neighbours of a
    # number's digit, and the paper that the page's light is judged on.
    margin = max(side, SMALL_DIGIT_SIDE // 2)
    crop = (max(0, cols.start - margin) * scale, max(0, rows.start - margin) * scale,
            min(image.width, (cols.stop + margin) * scale),
            min(image.height, (rows.stop + margin) * scale))
    return page_strokes(image.crop(tuple(round(edge) for edge in crop)), find)


def small_mark(strokes: np.ndarray, darkness: np.ndarray,
               found: tuple[slice, slice]) -> tuple[slice, slice] | None:
    """The box of the largest piece of the `strokes` that the image's edges do not cut, when it
    is under SMALL_DIGIT_SIDE and nearly as dark as the ink `found` (PEN_SHARE); else, the same
    among the ink of the darkness left once the cut pieces are taken out (a small digit's ink,
    blurred at the work scale, can fall under the threshold that a shadow's edge sets); else None.
    """
    labels, _ = ndimage.label(strokes, structure=np.ones((3, 3)))
    darkest = float(darkness[found][strokes[found]].max()) if strokes[found].any() else 1.0
    best, cut = inside_mark(labels, darkness, PEN_SHARE * darkest)
    if best is not None or not cut.any():
        return best
    rest = np.where(within(cut, 2.0), 0, darkness)
    marks, _ = ndimage.label(rest > ink_threshold(rest), structure=np.ones((3, 3)))
    return inside_mark(marks, rest, PEN_SHARE * float(rest.max()))[0]


def inside_mark(labels: np.ndarray, darkness: np.ndarray,
                level: float) -> tuple[tuple[slice, slice] | None, np.ndarray]:
    """The box of the largest labelled piece that the image's edges do not cut, under
    SMALL_DIGIT_SIDE and with its darkest pixel at `level` at least (None if there is none), and
    the mask of the pieces that the edges cut."""
    best, best_area, cut = None, 0, np.zeros(labels.shape, bool)
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        piece = labels[rows, cols] == index
        if edges_reached(rows, cols, labels.shape):
            cut[rows, cols] |= piece
        elif max(rows.stop - rows.start, cols.stop - cols.start) < SMALL_DIGIT_SIDE \
                and piece.sum() > best_area and darkness[rows, cols][piece].max() >= level:
            best, best_area = (rows, cols), int(piece.sum())
    return best, cut


def frame_strokes(darkness: np.ndarray, strokes: np.ndarray, ink: np.ndarray, half_width: float,
                  box: int = 20, size: int = 28) -> Tensor:
    """One digit's `strokes` (a mask of `darkness`, as stroke_mask found them with all the `ink`
    and the strokes' `half_width`), framed as MNIST framed its digits (mnist_frame)."""
    level = np.percentile(darkness[strokes], 99)
    # The strokes' soft edges, out to half a stroke's width, but not the ink that was dropped.
    near = within(strokes, max(2.0, half_width / 2)) & (strokes | ~ink)
    ink = np.where(near, np.clip(darkness / level, 0, 1), 0).astype(np.float32)
    return mnist_frame(with_pen(ink, strokes), box, size)


def with_pen(ink: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """The digit's `ink` (float, in [0, 1]) with its `strokes` widened, all by one amount, until
    the widest are MIN_PEN_SHARE of the digit's longer side, where they are narrower: a fine pen's
    digit nearer to what MNIST's thick pen wrote. The width is the digit's own, not the page's
    (stroke_mask's half-width, over every mark)."""
    found = bounding_box(strokes, margin=0)
    if found is None:
        return ink
    side = max(found[0].stop - found[0].start, found[1].stop - found[1].start)
    # A stroke w pixels wide lies within about (w + 1) / 2 of the paper at its middle.
    width = 2 * float(np.percentile(depth(strokes)[strokes], 97)) - 1
    grow = (MIN_PEN_SHARE * side - width) / 2
    if grow <= 0:
        return ink
    pen = np.clip(grow + 1 - distance_from(strokes, grow + 1), 0, 1)  # its edge a pixel soft
    return np.maximum(ink, pen.astype(ink.dtype))


def no_digit(reason: str) -> ImageError:
    """The one answer for an input that holds no digit, whatever found it out: the CLI, the API
    and the server all say `no digit found (...)` (a score of whether an image holds a digit
    answers through it too)."""
    return ImageError(f"no digit found ({reason})")


def check_digit_ink(darkness: np.ndarray, strokes: np.ndarray | None = None) -> None:
    """Raises no_digit unless `darkness` (0: paper, 1: black) holds a mark that can be a digit:
    darker than the rest by MIN_INK_DARKNESS (not blank, nor nearly uniform), and at least
    MIN_DIGIT_SIDE pixels long, as its `strokes` (the digit's ink, as the preprocessing found it;
    by default the pixels at least half as dark as the darkest) measure. An image's preprocessing
    judges its darkness at the size the digit is looked for (WORK_SIDE, for a larger image: a
    speck is a pixel there, however the image's stretched contrast darkens it), and a prepared
    input (white on black: its values are its ink) is judged alike."""
    low, high = (float(darkness.min()), float(darkness.max())) if darkness.size else (0.0, 0.0)
    if high - low < MIN_INK_DARKNESS:
        raise no_digit("the image is blank or nearly uniform")
    box = bounding_box(darkness - low >= (high - low) / 2 if strokes is None else strokes, 0)
    side = int(max(box[0].stop - box[0].start, box[1].stop - box[1].start)) if box else 0
    if side < MIN_DIGIT_SIDE:
        raise no_digit(f"its ink is a mark {side} pixel{'s' * (side != 1)} across, too small to "
                       "be a digit")


def ink_darkness(gray: np.ndarray) -> np.ndarray:
    """How much darker than the paper around it each pixel is, in [0, 1] (0: paper, 1: black):
    the image divided by an estimate of the paper's brightness under the page's light. Light
    ink on dark paper is inverted first. An image whose levels (from black, 0) span less than
    MIN_INK_DARKNESS of its brightest, a blank page's grain and noise, holds no ink."""
    if gray.size == 0 or gray.max() - gray.min() < MIN_INK_DARKNESS * gray.max():
        return np.zeros_like(gray)
    seen = 1 - gray if light_ink(stretched(gray)) else gray
    paper = paper_brightness(seen)
    darkness = paper_darkness(seen, paper)
    # Ink can't cover most of a page, nor can paper be as dark as DARK_PAPER: thick strokes
    # outvoted the paper (light ink on a dark ground, which dividing by the paper's light hides).
    dark_ground = np.median(paper[::4, ::4]) < DARK_PAPER  # a sample is enough, and far faster
    if (darkness > ink_threshold(darkness)).mean() > 0.5 or dark_ground:
        seen = 1 - seen
        darkness = paper_darkness(seen)
    return with_blots_filled(seen, darkness)


def with_blots_filled(gray: np.ndarray, darkness: np.ndarray) -> np.ndarray:
    """`darkness` with each hole in the ink filled where `gray` there is no lighter than the ink
    around it: a blot wider than the paper's closing is taken for paper in shadow, all but its
    edge, and a ring is a fine pen's 0. A loop's hole holds paper, lighter than its ink."""
    ink = darkness > ink_threshold(darkness)
    holes, count = ndimage.label(ndimage.binary_fill_holes(ink) & ~ink)
    if not count:
        return darkness
    index = np.arange(1, count + 1)
    rings = np.where(ink, ndimage.grey_dilation(holes, size=3), 0)  # the ink along each hole
    inside = ndimage.mean(gray, holes, index)
    edge = ndimage.mean(gray, rings, index)
    # A faint ring (a grid's cell on a page in shadow) is no pen's blot.
    inked = ndimage.mean(darkness, rings, index) >= MIN_BLOT_DARKNESS
    solid = inked & (inside <= edge + BLOT_LEVELS * (1 - edge))
    fill = np.concatenate([[0.0], np.where(solid, ndimage.maximum(darkness, rings, index), 0)])
    return np.maximum(darkness, fill[holes]).astype(darkness.dtype, copy=False)


def paper_darkness(gray: np.ndarray, paper: np.ndarray | None = None) -> np.ndarray:
    """How much darker than the paper's brightness (`paper`, else paper_brightness's) each pixel
    is, in [0, 1]."""
    paper = paper_brightness(gray) if paper is None else paper
    return np.clip(1 - gray / np.maximum(paper, 1e-3), 0, 1)


def light_ink(gray: np.ndarray) -> bool:
    """Whether the ink is lighter than the paper. In most blocks wider than a stroke the paper is
    the majority, so the ink is the side on which the block's rare pixels stray far from its
    median: blocks vote, light ink needing twice the votes of dark (the image's border, or its
    overall median, mislead under a gradient or a shadow)."""
    block = max(9, round(0.12 * max(gray.shape)))
    tiles = in_blocks(gray, block)
    blocks = tiles.transpose(0, 2, 1, 3).reshape(tiles.shape[0] * tiles.shape[2], -1)
    # Sorting each block whole is several times faster than np.percentile's selection here; the
    # nearest rank, not an interpolation between two, is as good a vote.
    ranked = np.sort(blocks, axis=1)
    low, middle, high = ranked[:, [round(q * (ranked.shape[1] - 1)) for q in (0.02, 0.5, 0.98)]].T
    lean = (high - middle) - (middle - low)
    # A shadow's edge leans a block either way, and most pages are dark ink on light paper: light
    # ink needs a clear majority.
    return int((lean > 0.1).sum()) > 2 * int((lean < -0.1).sum())


def paper_brightness(gray: np.ndarray) -> np.ndarray:
    """The paper's brightness at each pixel, as if the ink were not there: a morphological
    closing, wider than a pen stroke, on a grid of the image's block maxima. A closing
    removes narrow dark things and keeps the light's gradients and the edges of shadows."""
    block = max(1, max(gray.shape) // 128)
    tiles = in_blocks(gray, block)
    # One maximum per offset in the block: numpy reduces a short strided axis slowly.
    coarse = functools.reduce(np.maximum, (tiles[:, row, :, col] for row in range(block)
                                           for col in range(block)))
    rows, cols = coarse.shape
    width = max(9, round(0.12 * max(gray.shape))) // block + 1
    coarse = ndimage.grey_closing(coarse, size=(width, width), mode="nearest")
    if block == 1:
        return coarse
    upsampled = Image.fromarray(coarse.astype(np.float32)).resize(
        (cols * block, rows * block), Image.Resampling.BILINEAR)
    return np.asarray(upsampled)[:gray.shape[0], :gray.shape[1]]


def in_blocks(gray: np.ndarray, block: int) -> np.ndarray:
    """The image as (rows, block, columns, block) tiles, edges repeated to fill the last ones."""
    rows, cols = -(-gray.shape[0] // block), -(-gray.shape[1] // block)
    padding = ((0, rows * block - gray.shape[0]), (0, cols * block - gray.shape[1]))
    return np.pad(gray, padding, mode="edge").reshape(rows, block, cols, block)


def ink_threshold(darkness: np.ndarray) -> float:
    """The darkness over which a pixel is ink: Otsu's split of the image's darkness, but at
    least a tenth, so that the paper's own grain is never ink."""
    return max(otsu_threshold(darkness), 0.1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The level that best splits `values` (in [0, 1]) into two classes (Otsu's method)."""
    indices = np.minimum((values * bins).astype(np.int64), bins - 1).ravel()
    counts = np.bincount(indices, minlength=bins)
    levels = (np.arange(bins) + 0.5) / bins
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * levels)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    return float(levels[np.nanargmax(np.nan_to_num(between[:-1], nan=-1))] + 0.5 / bins)


def stroke_mask(darkness: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The pen's strokes: the pixels darker than Otsu's threshold, less anything much thinner
    than the pen's strokes (ruling, grid lines, specks). Returns them, all the ink (over the
    threshold), and the thickest strokes' half-width."""
    ink = darkness > ink_threshold(darkness)
    if not ink.any():  # a blank image: check_digit_ink says so
        return ink, ink, 0.0
    distance = depth(ink)
    # The pen is measured on the ink within the image where it holds enough of the ink: a page's
    # edge or a shadow that the image's edge cuts can be wider than any pen, and the pen's
    # strokes would then be taken for lines. (Too little: a digit joined to a grid that the
    # edges cut, and a few specks.)
    inside = uncut(ink)
    measured = inside if inside.sum() >= UNCUT_SHARE * ink.sum() else ink
    stroke = float(np.percentile(distance[measured], 97))  # half the thickest strokes' width
    strokes = ink
    if stroke >= 3.5:  # strokes thick enough to tell from lines a third as wide
        radius = stroke / 3
        thick = ink & within(distance > radius, radius + 0.5)  # an opening: strokes, not lines
        strokes = thick | short_pieces(ink & ~thick) if thick.any() else ink
    return strokes, ink, stroke


def digit_pieces(strokes: np.ndarray, darkness: np.ndarray) -> np.ndarray:
    """One digit's strokes among a page's: the largest connected piece of pen's ink (PEN_SHARE)
    and the large ones near it."""
    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))
    if count == 0:
        return strokes
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    lines = np.array([across(rows, cols, area, strokes.shape)
                      or edges_reached(rows, cols, strokes.shape) == 4 and grid(labels == index)
                      for index, ((rows, cols), area) in enumerate(zip(boxes, areas), 1)])
    if lines.all():
        raise no_digit("only lines across the whole image: ruling, a margin or a grid")
    if count == 1:
        return strokes
    # The pen's ink is among the darkest on the page; a shadow's edge or a smudge of light that
    # passed for ink is much fainter, however large.
    peaks = piece_peaks(darkness, labels, count)
    inked = np.where((peaks >= PEN_SHARE * peaks.max()) & ~lines, areas, 0)
    largest = boxes[int(np.argmax(inked))]
    # Pieces within half the digit's size of it (at least 14 pixels, half MNIST's frame, for a
    # digit drawn that small) are the digit's; farther ones are other marks on the page.
    margin = max(largest[0].stop - largest[0].start, largest[1].stop - largest[1].start, 28) // 2
    keep = [index + 1 for index, (area, (rows, cols)) in enumerate(zip(areas, boxes))
            if area >= 0.02 * inked.max() and rows.stop > largest[0].start - margin
            and rows.start < largest[0].stop + margin and cols.stop > largest[1].start - margin
            and cols.start < largest[1].stop + margin]
    return np.isin(labels, keep)


def piece_peaks(darkness: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The darkest value of each of the `count` labelled pieces (labels 1 to count) of a
    `darkness` in [0, 1], as ndimage.maximum gives them, in one pass over the pieces' pixels
    (ndimage sorts the labels: on a noisy photo's specks, many times slower)."""
    inside = labels > 0
    peaks = np.zeros(count + 1, dtype=darkness.dtype)
    np.maximum.at(peaks, labels[inside], darkness[inside])
    return peaks[1:]


def across(rows: slice, cols: slice, area: int, shape: tuple[int, ...]) -> bool:
    """Whether a piece of ink is a line across the whole image (a ruling, a margin, a page's
    edge): from one edge to the opposite one, and on average thinner than LINE_SHARE of the
    image's other side. A digit cropped tight is as long, but wider."""
    height, width = shape
    if rows.start == 0 and rows.stop == height and area / height < LINE_SHARE * width:
        return True
    return cols.start == 0 and cols.stop == width and area / width < LINE_SHARE * height


def without_lines(strokes: np.ndarray) -> np.ndarray:
    """The `strokes` less the lines across the image (across), straight, tilted or bent, that
    they hold: a margin line that a digit touches leaves the digit; one that crosses a digit
    leaves the stroke's pixels where it crossed, or parts that join again as a digit's pieces do
    (multidigit.merged_columns)."""
    labels, _ = ndimage.label(strokes, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())
    kept = strokes.copy()
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        if across(rows, cols, int(areas[index]), strokes.shape):
            piece = labels == index
            # A piece from edge to edge both ways is taken down the image, as across() tests.
            tall = rows.stop - rows.start == strokes.shape[0]
            kept &= ~(line_band(piece) if tall else line_band(piece.T).T)
    return kept


def line_band(piece: np.ndarray) -> np.ndarray:
    """The pixels of a piece running from the top of the image to its bottom that belong to
    its line: the rows that hold only the line (no more ink than half again the usual row's)
    trace its centre, followed in between where something else joins it, as wide as it is."""
    counts = piece.sum(axis=1)
    alone = np.flatnonzero((counts > 0) & (counts <= 1.5 * np.median(counts[counts > 0])))
    centres = (piece[alone] * np.arange(piece.shape[1])).sum(axis=1) / counts[alone]
    rows = np.arange(piece.shape[0])
    centre = np.interp(rows, alone, centres)  # follows a bent or bowed line too
    half = np.median(counts[alone]) / 2 + 1  # and a pixel of its soft edge
    band = np.abs(np.arange(piece.shape[1]) - centre[:, None]) <= half
    # Where a stroke crosses the line, with ink on both sides of it, the stroke keeps its pixels.
    left = np.clip(np.round(centre - half - 1), 0, piece.shape[1] - 1).astype(int)
    right = np.clip(np.round(centre + half + 1), 0, piece.shape[1] - 1).astype(int)
    crossed = piece[rows, left] & piece[rows, right]
    return piece & band & ~crossed[:, None]


def border(array: np.ndarray) -> np.ndarray:
    """The values on the image's four edges (the corners twice)."""
    return np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])


def uncut(mask: np.ndarray) -> np.ndarray:
    """The pieces of `mask` that the image's edges do not cut."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    cut = border(labels)
    return mask & ~np.isin(labels, cut[cut > 0])


def edges_reached(rows: slice, cols: slice, shape: tuple[int, ...]) -> int:
    """How many of the image's four edges a piece's bounding box reaches (0: within the image)."""
    return (rows.start == 0) + (cols.start == 0) + (rows.stop == shape[0]) \
        + (cols.stop == shape[1])


def grid(piece: np.ndarray) -> bool:
    """Whether a piece of ink that reaches all four edges of the image (its mask) is a squared
    page's grid: it encloses more than GRID_CELLS holes of a digit's size at least (an 8
    encloses two), or it is a few of a grid's lines seen close up (only_lines)."""
    holes, count = ndimage.label(~piece)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    sizes[border(holes)] = 0  # open to an edge
    sizes[0] = 0
    return bool((sizes >= MIN_DIGIT_SIDE ** 2).sum() > GRID_CELLS) or only_lines(piece)


def only_lines(piece: np.ndarray) -> bool:
    """Whether a piece of ink (its mask) is nothing but level lines across the image and down it,
    a few of a grid's seen close up: rows and columns at least LINE_FILL inked, at least one run
    of them each way and each run thinner than LINE_SHARE of the image's side across it (a line,
    not a stroke of a digit cropped to its ink), hold all of it, with a pixel either side for their
    soft edges, but less than a digit's smallest mark (MIN_DIGIT_SIDE squared)."""
    rows, cols = piece.mean(axis=1) >= LINE_FILL, piece.mean(axis=0) >= LINE_FILL
    if not (thin_runs(rows, LINE_SHARE * len(rows)) and thin_runs(cols, LINE_SHARE * len(cols))):
        return False
    lines = ndimage.binary_dilation(rows)[:, None] | ndimage.binary_dilation(cols)[None, :]
    return int((piece & ~lines).sum()) < MIN_DIGIT_SIDE ** 2


def thin_runs(full: np.ndarray, most: float) -> bool:
    """Whether a row of flags holds a run of them, and every run is shorter than `most`."""
    runs, count = ndimage.label(full)
    return count > 0 and int(np.bincount(runs)[1:].max()) < most


def depth(mask: np.ndarray) -> np.ndarray:
    """Each True pixel's distance to the nearest False one (0 elsewhere): the Euclidean distance
    transform, computed on the bounding box of `mask` grown by a pixel, which gives the same
    values as on the whole image and costs much less where the ink is a small part of it."""
    distance = np.zeros(mask.shape)
    box = bounding_box(mask, margin=1)
    if box is not None:
        distance[box] = ndimage.distance_transform_edt(mask[box])
    return distance


def within(mask: np.ndarray, radius: float) -> np.ndarray:
    """The pixels at most `radius` from a True pixel of `mask` (a dilation by a disc)."""
    return distance_from(mask, radius) <= radius


def distance_from(mask: np.ndarray, reach: float) -> np.ndarray:
    """Each pixel's distance to the nearest True pixel of `mask`, computed on the only part of
    the image within `reach` of one: the bounding box of `mask` grown by `reach` (infinite
    outside it, and everywhere for an empty mask)."""
    distance = np.full(mask.shape, np.inf)
    box = bounding_box(mask, margin=int(reach) + 1)
    if box is not None:
        distance[box] = ndimage.distance_transform_edt(~mask[box])
    return distance


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The slices of the smallest box holding every True pixel of `mask`, grown by `margin` on
    each side within the image; None when there is none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def short_pieces(thin: np.ndarray) -> np.ndarray:
    """The thin pieces that are not lines: those that neither reach the image's edge nor run a
    third of its width or height (a digit's thin parts, say, between its thick ones)."""
    labels, _ = ndimage.label(thin, structure=np.ones((3, 3)))
    height, width = thin.shape
    keep = [index + 1 for index, (rows, cols) in enumerate(ndimage.find_objects(labels))
            if rows.start > 0 and cols.start > 0 and rows.stop < height and cols.stop < width
            and rows.stop - rows.start < height / 3 and cols.stop - cols.start < width / 3]
    return np.isin(labels, keep)


def mnist_frame(ink: np.ndarray, box: int = 20, size: int = 28) -> Tensor:
    """White ink on black (float in [0, 1]) cropped to the ink, its longer side scaled to `box`
    pixels, centred by centre of mass in `size` x `size`, as MNIST framed its digits."""
    if ink.max() <= 0:
        raise no_digit("the image is blank or nearly uniform")
    ink = ink / ink.max()
    rows, cols = np.nonzero(ink > 0.1)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = box / max(ink.shape)
    height, width = (max(1, round(side * scale)) for side in ink.shape)
    ink = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.LANCZOS))
    ink = ink.clip(0, 1)
    if ink.max() <= 0:
        raise no_digit("the ink vanishes at 28x28")
    ink = ink / ink.max()  # shrinking thins and greys a large photo's strokes; MNIST's are full
    total = ink.sum()
    centre_row = (ink.sum(1) * np.arange(height)).sum() / total
    centre_col = (ink.sum(0) * np.arange(width)).sum() / total
    # MNIST's mean centre of mass is pixel (14, 14); clamp so that no ink is cut off.
    top = min(max(round(size / 2 - centre_row), 0), size - height)
    left = min(max(round(size / 2 - centre_col), 0), size - width)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + height, left:left + width] = ink
    return torch.from_numpy(canvas)


def preprocess_garment(image: Image.Image, size: int = 28) -> Tensor:
    """A photo of one garment on a plain background, as Fashion-MNIST prepared its own: light on
    black, cropped to the garment, padded to a square and scaled so its longer side fills `size`.

    Returns float32 (size, size) in [0, 1], before normalization.
    """
    gray = to_grayscale(image, WORK_SIDE)
    edge = border(gray)
    if np.median(edge) > 0.5:  # a light background: Fashion-MNIST's is black
        gray, edge = 1 - gray, 1 - edge
    rows, cols = np.nonzero(gray > np.median(edge) + 0.1)
    if len(rows) == 0:
        raise ImageError("no garment found (the image is blank or nearly uniform)")
    gray = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = max(gray.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - gray.shape[0]) // 2, (side - gray.shape[1]) // 2
    square[top:top + gray.shape[0], left:left + gray.shape[1]] = gray
    square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
    return torch.from_numpy(square.clip(0, 1).copy())


def preprocess_photo(image: Image.Image, size: int = 32) -> Tensor:
    """A photo of one object, framed as CIFAR-10's are: in colour, the centre square of the photo
    (the shorter side whole), scaled to `size` pixels a side.

    Returns float32 (3, size, size) in [0, 1], RGB, before normalization.
    """
    image = on_ground(image)
    if image.mode in GRAY_MODES and image.mode != "L":  # 16-bit or float gray: RGB would clip it
        image = Image.fromarray(np.round(to_grayscale(image) * 255).astype(np.uint8))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # Box filtering down to a few times the size, Lanczos for the last step: sharp and quick.
    square = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS,
                                         box=(left, top, left + side, top + side),
                                         reducing_gap=3.0)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255).permute(2, 0, 1)


# How an image becomes a model's input, by the dataset the model learned.
PREPROCESSING: dict[str, Callable[[Image.Image], Tensor]] = {
    "mnist": preprocess_digit, "fashion-mnist": preprocess_garment, "cifar10": preprocess_photo}
