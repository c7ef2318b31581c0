"""MNIST digits shown as a person would hand them in: phone photos of a page, scans, drawings.

Each condition renders a 28x28 MNIST digit (white on black, uint8) as an image file's
content, seeded, so that the photo benchmark (bench.py --photos) and the tests use the
same pictures. Photos are dark ink on paper, under the page's light, saved as JPEG.
"""

import io

import numpy as np
from PIL import Image

from lenetkit.strokes import drawn_along, skeleton

# One condition each, then everything at once ("phone photo"); the first rows are clean images.
CLEAN_CONDITIONS = ("mnist 28x28", "redrawn", "fine pen", "scan")
PHOTO_CONDITIONS = ("gradient", "shadow", "ruled", "squared", "blue ink", "tilt", "noise+jpeg",
                    "phone photo")
CONDITIONS = CLEAN_CONDITIONS + PHOTO_CONDITIONS
PAGE = (640, 480)  # width, height of a rendered photo: a phone photo, scaled down
BLACK_INK, BLUE_INK = (0.12, 0.12, 0.14), (0.10, 0.18, 0.55)
RULING, GRID = (0.55, 0.68, 0.88), (0.62, 0.70, 0.80)
# A fine pen's width in pixels, for a digit about 200 pixels tall: a ballpoint's or a fineliner's
# line on a digit a centimetre or two tall, photographed close.
FINE_PEN = (2.0, 12.0)


def redrawn(digit: np.ndarray, pen: float | None = None) -> Image.Image:
    """The digit (or a number's digits side by side) blown up 10x as dark ink on white paper,
    off-centre on a larger page; with `pen`, its strokes thinned to their middle lines and drawn
    again with a pen that many pixels wide (the digit is about 200 tall)."""
    digit = side_by_side(digit)
    width = digit.shape[1] * 10
    glyphs = np.asarray(Image.fromarray(digit).resize((width, 280), Image.Resampling.BICUBIC))
    if pen is not None:
        glyphs = (255 * drawn_along(skeleton(glyphs > 127), pen)).astype(np.uint8)
    page = Image.new("L", (width + 120, 360), 255)
    page.paste(Image.fromarray(255 - glyphs), (10, 70))
    return page


def side_by_side(digits: np.ndarray) -> np.ndarray:
    """A number's digits (n, 28, 28) as one image (28, 28n), as MNIST frames them; a lone digit
    (28, 28) as it is."""
    return digits if digits.ndim == 2 else np.hstack(list(digits))


def render(digit: np.ndarray, condition: str, seed: int) -> tuple[Image.Image, int | None]:
    """`digit` (28x28 uint8, white on black; or a number's digits, n x 28 x 28, written side by
    side) as the picture of `condition` (one of CONDITIONS), and the JPEG quality its file is
    saved at (None: a PNG)."""
    if condition == "mnist 28x28":
        return Image.fromarray(side_by_side(digit)), None
    if condition == "redrawn":
        return redrawn(digit), None
    rng = np.random.default_rng(seed)
    if condition == "fine pen":
        return redrawn(digit, pen=rng.uniform(*FINE_PEN)), None
    effects = {condition} if condition != "phone photo" else {
        "gradient", "shadow", "tilt", "noise+jpeg", *rng.choice(["ruled", "squared", "plain"], 1),
        *rng.choice(["blue ink", "black ink"], 1)}
    width, height = PAGE
    reflectance = paper(rng, effects, width, height)
    ink = ink_opacity(digit, rng, width, height)
    colour = np.array(BLUE_INK if "blue ink" in effects else BLACK_INK, dtype=np.float32)
    reflectance = reflectance * (1 - ink[..., None]) + colour * ink[..., None]
    if "tilt" in effects:
        reflectance = tilted(reflectance, rng.uniform(4, 8) * rng.choice([-1, 1]))
    pixels = 235 * reflectance * illumination(rng, effects, width, height)[..., None] + 8
    if condition == "scan":
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), None
    noise = rng.uniform(3, 8) if "noise+jpeg" in effects else 2.0
    pixels = pixels + rng.normal(0, noise, pixels.shape)
    quality = int(rng.integers(45, 80)) if "noise+jpeg" in effects else 90
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), quality


def encode(image: Image.Image, quality: int | None) -> bytes:
    """The image file's bytes: a JPEG of that quality, or a PNG."""
    buffer = io.BytesIO()
    if quality is None:
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photo(digit: np.ndarray, condition: str, seed: int) -> Image.Image:
    """The picture as its file holds it (JPEG artefacts included), decoded."""
    return Image.open(io.BytesIO(encode(*render(digit, condition, seed))))


def blank_pages(count: int, first_seed: int) -> list[Image.Image]:
    """Photos of pages with nothing written on them: `count` under each of PHOTO_CONDITIONS,
    seeded from `first_seed` on."""
    empty = np.zeros((28, 28), np.uint8)
    return [photo(empty, condition, first_seed + seed) for condition in PHOTO_CONDITIONS
            for seed in range(count)]


def small_digit_photo(digit: np.ndarray, seed: int, size: tuple[int, int] = (4000, 3000),
                      height: int = 40) -> tuple[Image.Image, int, tuple[int, int, int, int]]:
    """A phone photo (12 MP) of a plain page under uneven light and a shadow, its digit written
    `height` pixels tall somewhere on it (MNIST's 20-pixel box to `height`); the JPEG quality its
    file is saved at; and the digit's surroundings, three times its frame's size (left, top,
    right, bottom): a small digit on a large page, as a photo of a form shows one."""
    rng = np.random.default_rng(seed)
    effects = {"gradient", "shadow"}
    width, page_height = PAGE
    light = paper(rng, effects, width, page_height) \
        * illumination(rng, effects, width, page_height)[..., None]
    page = Image.fromarray((235 * light + 8).clip(0, 255).astype(np.uint8))
    pixels = np.asarray(page.resize(size, Image.Resampling.BICUBIC), np.float32)
    side = round(height * 28 / 20)
    glyph = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC),
                       np.float32)[..., None] / 255
    top, left = (int(rng.uniform(0.1, 0.9) * (full - side)) for full in size[::-1])
    window = pixels[top:top + side, left:left + side]
    window *= 1 - 0.85 * glyph  # dark ink, under the page's light
    pixels += rng.normal(0, 4, pixels.shape).astype(np.float32)  # a camera's noise, at full size
    around = (max(0, left - side), max(0, top - side), left + 2 * side, top + 2 * side)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), 90, around


def paper(rng: np.random.Generator, effects: set, width: int, height: int) -> np.ndarray:
    """Off-white paper, ruled (with a margin line) or squared: reflectance (height, width, 3)."""
    page = np.ones((height, width, 3), np.float32) * rng.uniform(0.9, 1.0, 3).astype(np.float32)
    digit_height = height * 0.45
    if "ruled" in effects:
        lines(page, RULING, spacing=digit_height * rng.uniform(0.55, 0.8), width=3, axis=0, rng=rng)
        lines(page, (0.85, 0.3, 0.3), spacing=width, width=2, axis=1, rng=rng)  # the margin
    if "squared" in effects:
        for axis in (0, 1):
            spacing = digit_height * rng.uniform(0.2, 0.3)
            lines(page, GRID, spacing=spacing, width=2, axis=axis, rng=rng)
    return page


def lines(page: np.ndarray, colour: tuple, spacing: float, width: int, axis: int,
          rng: np.random.Generator) -> None:
    """Draws straight lines across the page, `spacing` apart, along rows (axis 0) or columns."""
    strength = rng.uniform(0.6, 0.9)
    length = page.shape[axis]
    for start in np.arange(rng.uniform(0, spacing), length, spacing).astype(int):
        across = slice(start, start + width)
        band = (across, slice(None)) if axis == 0 else (slice(None), across)
        page[band] = page[band] * (1 - strength) + np.array(colour, np.float32) * strength


def ink_opacity(digit: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The digit's grey levels as ink opacity on the page: scaled to about half the page's height,
    somewhat off-centre. A number's digits are written in a row, as wide as the page allows."""
    if digit.ndim == 3:
        return number_opacity(digit, rng, width, height)
    side = int(height * rng.uniform(0.45, 0.65))  # MNIST's 28 pixels hold a 20-pixel digit
    glyph = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    glyph = np.asarray(glyph, np.float32) / 255
    canvas = np.zeros((height, width), np.float32)
    top = int((height - side) / 2 + rng.uniform(-0.1, 0.1) * height)
    left = int((width - side) / 2 + rng.uniform(-0.15, 0.15) * width)
    canvas[top:top + side, left:left + side] = glyph
    return canvas.clip(0, 1)


def number_opacity(digits: np.ndarray, rng: np.random.Generator, width: int,
                   height: int) -> np.ndarray:
    """A number's digits (n, 28, 28) as ink opacity: in a row across the page, each MNIST frame
    apart from the next by up to a fifth of its side, the row as large as the page allows up to
    half its height and somewhat off-centre."""
    gaps = rng.uniform(0, 0.2, len(digits))
    side = int(min(height * rng.uniform(0.3, 0.5), 0.9 * width / (len(digits) + gaps.sum())))
    canvas = np.zeros((height, width), np.float32)
    row_width = int(side * (len(digits) + gaps[1:].sum()))
    top = int((height - side) / 2 + rng.uniform(-0.1, 0.1) * height)
    left = int((width - row_width) / 2 + rng.uniform(-0.5, 0.5) * (0.9 * width - row_width))
    for digit, gap in zip(digits, gaps):
        glyph = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
        canvas[top:top + side, left:left + side] += np.asarray(glyph, np.float32) / 255
        left += int(side * (1 + gap))
    return canvas.clip(0, 1)


def tilted(reflectance: np.ndarray, degrees: float) -> np.ndarray:
    """The page turned by `degrees`; the corners it uncovers are paper."""
    channels = []
    for channel in np.moveaxis(reflectance, 2, 0):
        fill = float(np.median(channel))
        turned = Image.fromarray(channel).rotate(degrees, Image.Resampling.BILINEAR, fillcolor=fill)
        channels.append(np.asarray(turned))
    return np.stack(channels, axis=2)


def illumination(rng: np.random.Generator, effects: set, width: int, height: int) -> np.ndarray:
    """The light on the page: a gradient across it, and a soft-edged shadow over part of it."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    light = np.ones((height, width), np.float32)
    if "gradient" in effects:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * cols / width + np.sin(angle) * rows / height)
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        light *= 1 - rng.uniform(0.35, 0.55) * ramp
    if "shadow" in effects:
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.25, 0.25) * width
        distance = np.cos(angle) * (cols - width / 2) + np.sin(angle) * (rows - height / 2) - offset
        softness = rng.uniform(0.01, 0.05) * width
        inside = 1 / (1 + np.exp(-distance / softness))
        light *= 1 - rng.uniform(0.35, 0.55) * inside
    return light

