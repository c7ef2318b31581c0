"""Augmentation: random distortions of a training batch, applied to the whole batch at once on
its device (no per-image transforms), their randomness drawn from one seeded generator."""

import math

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
    background = per_channel(background, images)
    uniform = lambda bound: (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) \
        * bound
    angle, zoom, skew = uniform(math.radians(rotation)), 1 + uniform(scale), uniform(shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + skew, uniform(2 * shift / width)], 1),
                         torch.stack([sin, cos, uniform(2 * shift / height)], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape),
                         align_corners=False)
    # grid_sample pads with zeros: shifted so that the padding is the background (black paper).
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + background


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


AUGMENTATIONS = ("affine", "shift", "reflect", "flip", "erase")


def augment(images: Tensor, augmentations: str, generator: torch.Generator,
            background: Tensor | float) -> Tensor:
    """A training batch through the comma-separated `augmentations` ("affine", "shift" or
    "reflect", "flip", "erase"; "none" for none), in that order; their randomness comes from
    `generator`; `background` (C, 1, 1) is a black pixel after normalization."""
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
    return images
