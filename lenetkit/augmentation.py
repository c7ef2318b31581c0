"""Augmentation: random distortions of a training batch, applied to the whole batch at once on
its device (no per-image transforms), their randomness drawn from one seeded generator."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lenetkit.datasets import per_channel


def random_affine(images: Tensor, generator: torch.Generator, background: Tensor | float,
                  rotation: float = 10.0, scale: float = 0.1, shear: float = 0.1,
                  shift: float = 2.0) -> Tensor:
    """Each normalized image (N, C, H, W) rotated by up to `rotation` degrees, scaled by up to
    1 +- `scale`, sheared by up to `shear` and shifted by up to `shift` pixels, all at random from
    `generator` (on the CPU, so runs are reproducible on any device), in one batched grid_sample;
    `background` (one number, or one a channel) is a black pixel's value after normalization."""
    n, _, height, width = images.shape
    uniform = lambda bound: (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) \
        * bound
    angle, zoom, skew = uniform(math.radians(rotation)), 1 + uniform(scale), uniform(shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + skew, uniform(2 * shift / width)], 1),
                         torch.stack([sin, cos, uniform(2 * shift / height)], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape),
                         align_corners=False)
    return resample(images, grid, background)


def resample(images: Tensor, grid: Tensor, background: Tensor | float) -> Tensor:
    """The images (N, C, H, W) read at `grid` (N, H, W, 2, grid_sample's coordinates in -1..1),
    bilinearly, what falls outside them `background`."""
    background = per_channel(background, images)
    # grid_sample pads with zeros: shifted so that the padding is the background (black paper).
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + background


def slant(images: Tensor, amounts: Tensor, background: Tensor | float) -> Tensor:
    """Each image (N, C, H, W) sheared about its centre by its `amounts` (N,): the column at row
    y moves right by amount * (centre - y) pixels, so a positive amount leans the strokes to
    the right (the top goes right, the bottom left), as italic writing does."""
    n = len(images)
    zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    # affine_grid maps output to input: reading from x + amount * y moves the ink the other way.
    theta = torch.stack([torch.stack([one, amounts.double(), zero], 1),
                         torch.stack([zero, one, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape),
                         align_corners=False)
    return resample(images, grid, background)


def dilate(images: Tensor) -> Tensor:
    """Each pixel of the images (N, C, H, W) replaced by the largest in its 3x3 square (a
    max-pool of stride 1), as the maxima of shifted copies, along rows and then columns: on the
    CPU many times faster than max_pool2d's stride-1 window."""
    padded = F.pad(images, (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(padded[..., :-2, :], padded[..., 1:-1, :]),
                         padded[..., 2:, :])
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def stroke_width(images: Tensor, amounts: Tensor) -> Tensor:
    """Each image (N, C, H, W), bright ink on a dark ground, with strokes thickened by its
    `amount` (N,) of a pixel on each side, -1..1 (negative: thinned). Drawn at twice the
    resolution, so that half a pixel is a 3x3 dilation (a max-pool) or erosion and a whole one a
    5x5; amounts between are blends of the two nearest, and the result is averaged back down.
    Pooling commutes with normalization, so normalized images work as well as pixels."""
    amounts = amounts.to(images.device, images.dtype).view(-1, 1, 1, 1).clamp(-1, 1)
    big = F.interpolate(images, scale_factor=2, mode="nearest")
    sign = torch.where(amounts >= 0, 1.0, -1.0)
    signed = big * sign  # an erosion is a dilation of the negated image
    levels = [signed, dilate(signed)]
    levels.append(dilate(levels[1]))  # twice by 3x3: by 5x5
    steps = amounts.abs() * 2  # in half pixels: 0..2
    lower = torch.where(steps <= 1, levels[0], levels[1])
    upper = torch.where(steps <= 1, levels[1], levels[2])
    fraction = torch.where(steps <= 1, steps, steps - 1)
    drawn = (lower + fraction * (upper - lower)) * sign
    return F.avg_pool2d(drawn, 2)


def down_up(images: Tensor, size: int) -> Tensor:
    """The images (N, C, H, W) as a low-resolution scan would make them: averaged down to
    `size` x `size` pixels, then smoothly (bilinearly) enlarged back to H x W."""
    small = F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)


def gaussian_rows(size: int, sigma: float) -> Tensor:
    """The (size, size) matrix that blurs a vector of `size` by a Gaussian of `sigma`, each row
    scaled to sum to 1 so that the edges keep their level; a blur of H x W images is
    gaussian_rows(H) @ images @ gaussian_rows(W).T."""
    offsets = torch.arange(size, dtype=torch.float32)
    weights = torch.exp(-(offsets[:, None] - offsets[None, :]) ** 2 / (2 * sigma ** 2))
    return weights / weights.sum(1, keepdim=True)


def elastic(images: Tensor, generator: torch.Generator, background: Tensor | float,
            alpha: Tensor | float, sigma: float = 4.0) -> Tensor:
    """Elastic distortion (Simard et al., 2003): each image (N, C, H, W) warped by a random field
    of displacements, uniform in -1..1 at each pixel, smoothed by a Gaussian of `sigma` pixels
    and scaled by `alpha` pixels (one number, or one an image), drawn from `generator`."""
    n, _, height, width = images.shape
    field = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    field = gaussian_rows(height, sigma) @ field @ gaussian_rows(width, sigma).T
    alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1, 1, 1, 1)
    scale = torch.tensor([2 / width, 2 / height]).view(1, 2, 1, 1)  # pixels to grid units
    identity = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, height, width],
                             align_corners=False)
    grid = identity + (field * alpha * scale).permute(0, 2, 3, 1)
    return resample(images, grid.to(images.device, images.dtype), background)


def random_shift(images: Tensor, generator: torch.Generator, background: Tensor | float | None,
                 shift: int = 2) -> Tensor:
    """Each image (N, C, H, W) moved by a whole number of pixels, up to `shift` each way and
    independently in each direction, the uncovered edge filled with `background`, or with the
    image's reflection when it is None (the padded random crop of the CIFAR and Fashion-MNIST
    literature). Whole pixels keep the strokes and textures sharp, which random_affine's
    interpolation blurs."""
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * shift + 1, (2, n, 1), generator=generator).to(images.device)
    if background is None:
        padded = F.pad(images, (shift,) * 4, mode="reflect")
    else:
        padded = per_channel(background, images).expand(
            n, images.shape[1], height + 2 * shift, width + 2 * shift).clone()
        padded[:, :, shift:shift + height, shift:shift + width] = images
    rows = (torch.arange(height, device=images.device) + offsets[0])[:, :, None]  # (N, H, 1)
    cols = (torch.arange(width, device=images.device) + offsets[1])[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    picked = padded[batch, :, rows, cols]  # (N, H, W, C)
    return picked.permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image (N, C, H, W) mirrored left to right with probability 1/2."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)


def random_erase(images: Tensor, generator: torch.Generator,
                 area: tuple[float, float] = (0.02, 0.33),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> Tensor:
    """Random erasing (Zhong et al., 2017, with torchvision's defaults): in half of the images
    (N, C, H, W), a rectangle of `area` times the image and aspect ratio in `aspect` is set to 0,
    the mean pixel after normalization."""
    n, _, height, width = images.shape
    rand = lambda: torch.rand(n, generator=generator, dtype=torch.float64)
    size = (area[0] + rand() * (area[1] - area[0])) * height * width
    ratio = torch.exp(math.log(aspect[0]) + rand() * (math.log(aspect[1]) - math.log(aspect[0])))
    box_height = (size * ratio).sqrt().round().clamp(1, height)
    box_width = (size / ratio).sqrt().round().clamp(1, width)
    top = (rand() * (height - box_height + 1)).floor()
    left = (rand() * (width - box_width + 1)).floor()
    chosen = rand() < 0.5
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])  # (N, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])  # (N, W)
    erased = chosen[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]
    return images.masked_fill(erased.unsqueeze(1).to(images.device), 0.0)


# Scan sizes random_scan draws from (H itself: no loss), a ladder from coarse to full.
SCAN_SIZES = (10, 12, 14, 16, 18, 20, 24, 28)


def uniform_between(n: int, generator: torch.Generator, low: float, high: float) -> Tensor:
    """`n` numbers drawn uniformly from low..high."""
    return low + torch.rand(n, generator=generator, dtype=torch.float64) * (high - low)


def random_stroke(images: Tensor, generator: torch.Generator, thinnest: float = -0.5,
                  thickest: float = 1.0) -> Tensor:
    """Each image's (N, C, H, W) strokes made thinner or thicker (stroke_width) by an amount
    drawn uniformly from thinnest..thickest: pens and pressures differ from writer to writer."""
    return stroke_width(images, uniform_between(len(images), generator, thinnest, thickest))


def random_slant(images: Tensor, generator: torch.Generator, background: Tensor | float,
                 most: float = 0.4) -> Tensor:
    """Each image (N, C, H, W) slanted (slant) by up to `most` either way, at random."""
    return slant(images, uniform_between(len(images), generator, -most, most), background)


def random_scan(images: Tensor, generator: torch.Generator,
                sizes: tuple[int, ...] = SCAN_SIZES) -> Tensor:
    """Each image (N, C, H, W) brought down to one of `sizes` (square) and back up (down_up), the
    size drawn at random: a low-resolution scan, smoothly enlarged."""
    picked = torch.randint(0, len(sizes), (len(images),), generator=generator)
    scanned = images.clone()
    for index, size in enumerate(sizes):
        chosen = (picked == index).nonzero().squeeze(1).to(images.device)
        if len(chosen) and size != images.shape[-1]:
            scanned[chosen] = down_up(images[chosen], size)
    return scanned


def random_elastic(images: Tensor, generator: torch.Generator, background: Tensor | float,
                   alpha: float = 34.0, sigma: float = 4.0) -> Tensor:
    """Each image (N, C, H, W) elastically distorted (elastic), its strength drawn uniformly
    from 0..`alpha`: the wobble of a hand."""
    strengths = uniform_between(len(images), generator, 0.0, alpha).float()
    return elastic(images, generator, background, strengths, sigma)


# Of the images in a batch, the share each writer's distortion (stroke, slant, scan, elastic)
# touches: the rest keep the training distribution's own look, which clean accuracy needs.
WRITER_SHARE = 0.5


def on_share(images: Tensor, generator: torch.Generator,
             distort: Callable[[Tensor], Tensor], share: float = WRITER_SHARE) -> Tensor:
    """The images (N, C, H, W) with a random `share` of them (each one by a coin of that bias)
    put through `distort`, the others as they were."""
    chosen = (torch.rand(len(images), generator=generator) < share).nonzero().squeeze(1)
    if not len(chosen):
        return images
    chosen = chosen.to(images.device)
    images = images.clone()
    images[chosen] = distort(images[chosen])
    return images


AUGMENTATIONS = ("affine", "shift", "reflect", "flip", "erase", "stroke", "slant", "scan",
                 "elastic")


def augment(images: Tensor, augmentations: str, generator: torch.Generator,
            background: Tensor | float) -> Tensor:
    """A training batch through the comma-separated `augmentations` (AUGMENTATIONS: "affine",
    "shift" or "reflect", "flip", "erase", then a writer's ways: "stroke", "slant", "scan",
    "elastic", each on a random WRITER_SHARE of the images; "none" for none), in that order;
    their randomness comes from `generator`; `background` (C, 1, 1) is a black pixel after
    normalization."""
    chosen = augmentations.split(",")
    if "affine" in chosen:
        images = random_affine(images, generator, background)
    if "shift" in chosen:
        images = random_shift(images, generator, background)
    if "reflect" in chosen:
        images = random_shift(images, generator, None)
    if "flip" in chosen:
        images = random_flip(images, generator)
    if "erase" in chosen:
        images = random_erase(images, generator)
    writers = {"stroke": lambda batch: random_stroke(batch, generator),
               "slant": lambda batch: random_slant(batch, generator, background),
               "scan": lambda batch: random_scan(batch, generator),
               "elastic": lambda batch: random_elastic(batch, generator, background)}
    for name, distort in writers.items():
        if name in chosen:
            images = on_share(images, generator, distort)
    return images
