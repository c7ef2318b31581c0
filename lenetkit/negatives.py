"""Images that hold no digit: typed letters, scribbles, textures and garments, drawn as dark ink
on light paper (as a person would hand them in), and as the model's 28x28 inputs, framed by
the digits' own preprocessing so that they look exactly as they would at prediction time.

They teach a digit model what a non-digit looks like (outlier exposure, TrainConfig.negatives),
calibrate and measure its digit score (digitscore.py). Everything is seeded, and split three
ways so that what trains never appears in what is measured:

- train: letters in DejaVu Sans, scribbles and textures from seeds 0 up, Fashion-MNIST's
  training split (less its validation images);
- val (choosing the score and its threshold): DejaVu Sans Mono, seeds from VAL_SEED_OFFSET,
  Fashion-MNIST's validation images;
- bench (held out, reported only): DejaVu Serif, seeds from BENCH_SEED_OFFSET, Fashion-MNIST's
  test split.

The fonts are the DejaVu faces matplotlib ships, the same on every machine with this project's
requirements.
"""

import functools
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from lenetkit.datasets import DEFAULT_VAL_SIZE, load_dataset, split_indices
from lenetkit.errors import UserError
from lenetkit.outputs import write_atomic
from lenetkit.preprocess import ImageError, preprocess_digit

TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
               "DejaVuSans-BoldOblique.ttf")
VAL_FONTS = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
             "DejaVuSansMono-BoldOblique.ttf")
HELD_OUT_FONTS = ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
                  "DejaVuSerif-BoldItalic.ttf")
FONTS = {"train": TRAIN_FONTS, "val": VAL_FONTS, "bench": HELD_OUT_FONTS}
# Seeds of a split's scribbles and textures start here: far apart, so the splits never meet.
VAL_SEED_OFFSET, BENCH_SEED_OFFSET = 1_000_000, 2_000_000
SEED_OFFSETS = {"train": 0, "val": VAL_SEED_OFFSET, "bench": BENCH_SEED_OFFSET}
# Letters and signs a person may read as a digit (0 O o Q D, 1 I l i J j |, 2 Z z, 5 S s $,
# 6 b G, 8 B, 9 g q): never shown as non-digits.
DIGIT_LIKE = set("OoQDIliJjZzSsbGBgq|!/$()[]")
LETTERS = "".join(char for char in string.ascii_letters + "&#%@?*λπΣΩΦΨ"
                  if char not in DIGIT_LIKE)
SCRIBBLES = ("strokes", "zigzag", "spiral", "dot", "cross", "coil", "tangle")
TEXTURES = ("blotches", "hatch", "checker", "speckle")
KINDS = ("letters", "scribbles", "textures", "fashion")
INK = 30  # a dark pen's grey on white (255) paper


def font_path(name: str) -> Path:
    """The file of one of the DejaVu faces that matplotlib ships."""
    import matplotlib  # only where letters are drawn: importing it takes a while

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


@functools.lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def letter_image(char: str, font: str | Path, size: int = 280,
                 rng: np.random.Generator | None = None) -> Image.Image:
    """`char` typed in `font` (a path, or a name of FONTS), dark on a `size`-pixel white square;
    with `rng`, at a random size, place, slant and pen weight."""
    path = Path(font) if Path(font).is_absolute() else font_path(str(font))
    scale, weight, angle, shift = 0.6, 0, 0.0, (0.0, 0.0)
    if rng is not None:
        scale, weight = rng.uniform(0.4, 0.75), int(rng.integers(0, max(1, size // 60) + 1))
        angle, shift = rng.uniform(-12, 12), tuple(rng.uniform(-0.1, 0.1, 2) * size)
    page = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(page)
    draw.text((size / 2 + shift[0], size / 2 + shift[1]), char, fill=INK, anchor="mm",
              font=_font(path, int(size * scale)), stroke_width=weight, stroke_fill=INK)
    return page.rotate(angle, Image.Resampling.BILINEAR, fillcolor=255) if angle else page


def _pen(rng: np.random.Generator, size: int) -> int:
    return int(rng.uniform(size / 45, size / 14))


def _points(xy: np.ndarray, size: int) -> list[tuple[float, float]]:
    """Points in [-1, 1] as pixel coordinates on a `size` square, a margin left around."""
    return [tuple(point) for point in (xy * 0.38 + 0.5) * size]


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The path of scribble `kind`, as (N, 2) points in [-1, 1]."""
    if kind == "strokes":  # four or more: fewer can be a 1, a 7 or an L
        return rng.uniform(-1, 1, (int(rng.integers(5, 10)), 2))
    if kind == "zigzag":
        count = int(rng.integers(6, 12))
        return np.stack([np.linspace(-1, 1, count), np.tile([-1, 1], count)[:count]
                         * rng.uniform(0.3, 1)], 1) @ _rotation(rng)
    turns = rng.uniform(2, 4) if kind == "spiral" else rng.uniform(4, 8)
    t = np.linspace(0, 2 * np.pi * turns, 200)
    if kind == "spiral":
        radius = 0.1 + 0.9 * t / t[-1]
        return np.stack([radius * np.cos(t), radius * np.sin(t)], 1) @ _rotation(rng)
    # a coil: loops strung along a line, like a row of e's or l's
    loop = rng.uniform(0.2, 0.5)
    return np.stack([t / t[-1] * 2 - 1 + loop * np.cos(t), loop * 1.5 * np.sin(t)], 1) \
        @ _rotation(rng)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def scribble_image(rng: np.random.Generator, size: int = 280,
                   kind: str | None = None) -> Image.Image:
    """A pen's scribble (one of SCRIBBLES, by default drawn from `rng`), dark on a white square."""
    kind = kind or str(rng.choice(SCRIBBLES))
    page = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(page)
    pen = _pen(rng, size)
    if kind == "dot":
        radius = rng.uniform(0.02, 0.2) * size
        x, y = rng.uniform(0.3, 0.7, 2) * size
        draw.ellipse((x - radius, y - radius * rng.uniform(0.7, 1.3), x + radius,
                      y + radius * rng.uniform(0.7, 1.3)), fill=INK)
    elif kind == "cross":
        for arm in (np.array([[-1.0, 0], [1, 0]]), np.array([[0.0, -1], [0, 1]])):
            draw.line(_points(arm * rng.uniform(0.5, 1) @ _rotation(rng), size), fill=INK,
                      width=pen)
    elif kind == "tangle":  # a ball of overlapping circles
        for _ in range(int(rng.integers(4, 9))):
            x, y = rng.uniform(0.3, 0.7, 2) * size
            radius = rng.uniform(0.08, 0.25) * size
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=INK, width=pen)
    else:
        draw.line(_points(_shape(kind, rng), size), fill=INK, width=pen, joint="curve")
    return page


def texture_image(rng: np.random.Generator, size: int = 280,
                  kind: str | None = None) -> Image.Image:
    """A patch of texture (one of TEXTURES, by default drawn from `rng`), dark on a white square."""
    kind = kind or str(rng.choice(TEXTURES))
    side = int(size * rng.uniform(0.4, 0.8))
    if kind == "blotches":
        noise = Image.fromarray(rng.random((8, 8)).astype(np.float32)).resize(
            (side, side), Image.Resampling.BICUBIC)
        patch = np.asarray(noise) > rng.uniform(0.45, 0.65)
    elif kind == "hatch":
        rows, cols = np.mgrid[0:side, 0:side]
        spacing = rng.uniform(side / 12, side / 5)
        patch = ((rows + cols) % spacing < spacing / 3) | ((rows - cols) % spacing < spacing / 3)
    elif kind == "checker":
        cell = max(2, int(side / rng.integers(3, 7)))
        rows, cols = np.mgrid[0:side, 0:side] // cell
        patch = (rows + cols) % 2 == 0
    else:  # speckle: many small spots
        spots = Image.fromarray(rng.random((side // 6, side // 6)).astype(np.float32))
        patch = np.asarray(spots.resize((side, side), Image.Resampling.NEAREST)) > 0.7
    page = np.full((size, size), 255, np.uint8)
    top, left = ((size - side) * rng.uniform(0.2, 0.8, 2)).astype(int)
    page[top:top + side, left:left + side][patch] = INK
    return Image.fromarray(page)


def fashion_image(garment: np.ndarray, size: int = 280) -> Image.Image:
    """A Fashion-MNIST image (28x28 uint8, light on black) as a dark garment on white paper."""
    return Image.fromarray(255 - garment).resize((size, size), Image.Resampling.BICUBIC)


def _rng(kind: str, split: str, index: int) -> np.random.Generator:
    """The generator of item `index` of `kind` in `split`: its own seed, in its split's range."""
    return np.random.default_rng([KINDS.index(kind), SEED_OFFSETS[split] + index])


def garments(split: str, data_dir: str | Path) -> Tensor:
    """Fashion-MNIST's images of `split` (uint8, N x 28 x 28): the training images less the
    validation ones that train.py would hold out, those, or the test set."""
    images, _ = load_dataset(data_dir, train=split != "bench", download=False,
                             dataset="fashion-mnist")
    if split == "bench":
        return images
    train, val = split_indices(len(images), DEFAULT_VAL_SIZE)
    return images[train if split == "train" else val]


def negative_images(kind: str, split: str, count: int, data_dir: str | Path | None = None,
                    size: int = 280) -> list[Image.Image]:
    """`count` pictures of non-digits of `kind` (one of KINDS) from `split` (train, val or
    bench), dark on white; Fashion-MNIST's are read from `data_dir`."""
    if kind == "fashion":
        if data_dir is None:
            raise ValueError("Fashion-MNIST's images are read from data_dir: pass it")
        chosen = garments(split, data_dir)[:count]
        return [fashion_image(garment.numpy(), size) for garment in chosen]
    draw: Callable[[int], Image.Image] = {
        "letters": lambda i: letter_image(LETTERS[i % len(LETTERS)],
                                          FONTS[split][i // len(LETTERS) % len(FONTS[split])],
                                          size, _rng(kind, split, i)),
        "scribbles": lambda i: scribble_image(_rng(kind, split, i), size),
        "textures": lambda i: texture_image(_rng(kind, split, i), size),
    }[kind]
    return [draw(index) for index in range(count)]


def framed(images: list[Image.Image]) -> tuple[Tensor, int]:
    """The model's inputs (N, 28, 28) in [0, 1] for the images that the digits' preprocessing
    takes, and how many it refused as holding no digit (blank, or a speck)."""
    inputs = []
    for image in images:
        try:
            inputs.append(preprocess_digit(image))
        except ImageError:
            continue
    stacked = torch.stack(inputs) if inputs else torch.zeros(0, 28, 28)
    return stacked, len(images) - len(inputs)


def negative_inputs(kinds: dict[str, int], split: str, data_dir: str | Path | None = None,
                    size: int = 280) -> Tensor:
    """The model inputs (N, 28, 28) of `count` non-digits of each kind (kinds: {kind: count}) from
    `split`, framed as digits are; those the preprocessing refuses are left out, and so are the
    garments when Fashion-MNIST is not in `data_dir` (no download: it is no model's dataset)."""
    parts = []
    for kind, count in kinds.items():
        if kind != "fashion":
            parts.append(_drawn_inputs(kind, split, count, size))
        elif data_dir is not None and has_garments(data_dir):
            parts.append(framed(negative_images(kind, split, count, data_dir, size))[0])
    return torch.cat(parts)


@functools.lru_cache(maxsize=16)
def _drawn_inputs(kind: str, split: str, count: int, size: int) -> Tensor:
    """The drawn non-digits' inputs, framed once a process: every training run calibrates on the
    same ones. Read-only: they are shared."""
    return framed(negative_images(kind, split, count, size=size))[0]


def has_garments(data_dir: str | Path) -> bool:
    """Whether Fashion-MNIST's files can be read from `data_dir`."""
    try:
        load_dataset(data_dir, train=False, download=False, dataset="fashion-mnist")
    except UserError:
        return False
    return True


# What trains a model's score (TrainConfig.negatives): each kind's count, drawn at a size that
# keeps their framing quick (the preprocessing's cost grows with the picture's area).
TRAIN_COUNTS = {"letters": 6000, "scribbles": 6000, "textures": 1500, "fashion": 10000}
TRAIN_SIZE = 112
# The validation split's non-digits that calibrate a trained model's score.
VAL_COUNTS = {"letters": 120, "scribbles": 120, "textures": 40, "fashion": 120}
# Bumped whenever the drawings or their framing change, so that a cache of older ones is not
# read.
VERSION = 3


def negatives_cache(data_dir: str | Path) -> Path:
    """Where training_negatives keeps the training split's non-digits once framed."""
    return Path(data_dir) / "nondigits" / f"train-v{VERSION}.pt"


def training_negatives(data_dir: str | Path) -> Tensor:
    """The training split's non-digits as model inputs (N, 28, 28) uint8 (255: ink). Framing them
    takes a minute, so they are kept in `data_dir`/nondigits/ after the first time (where that can
    be written) and read from there after."""
    cache = negatives_cache(data_dir)
    try:
        cached = torch.load(cache, weights_only=True)
        if isinstance(cached, Tensor) and cached.dtype == torch.uint8 and cached.dim() == 3 \
                and tuple(cached.shape[1:]) == (28, 28):
            return cached
    except Exception:  # missing or damaged: drawn again
        pass
    inputs = (negative_inputs(TRAIN_COUNTS, "train", data_dir, TRAIN_SIZE) * 255).round()
    inputs = inputs.to(torch.uint8)
    if not has_garments(data_dir):
        return inputs  # not kept: a later run with Fashion-MNIST there trains on the garments too
    try:
        write_atomic(cache, lambda file: torch.save(inputs, file))
    except UserError:  # a read-only data folder: drawn again next time
        pass
    return inputs
