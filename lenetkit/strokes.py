"""A digit's strokes drawn again with another pen: thinned to their middle lines and redrawn, as
a ballpoint or a fineliner draws them (photos.py's fine pen), or as the preprocessing frames
such a digit (a detector's training batches, TrainConfig.detector_pen)."""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The mask (H, W; or a batch of them, N, H, W) thinned to its middle lines, a pixel wide
    (Zhang and Suen's thinning, 1984: a stroke's parts stay joined; a blob two pixels across can
    vanish)."""
    image = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)]).astype(np.uint8)
    while True:
        removed = False
        for first in (True, False):
            p = image
            # The eight neighbours, clockwise from the one above.
            around = [p[..., :-2, 1:-1], p[..., :-2, 2:], p[..., 1:-1, 2:], p[..., 2:, 2:],
                      p[..., 2:, 1:-1], p[..., 2:, :-2], p[..., 1:-1, :-2], p[..., :-2, :-2]]
            up, right, down, left = around[0], around[2], around[4], around[6]
            count = sum(neighbour.astype(np.int8) for neighbour in around)
            turns = sum(((around[i] == 0) & (around[(i + 1) % 8] == 1)).astype(np.int8)
                        for i in range(8))
            side = (up * right * down == 0) & (right * down * left == 0) if first else \
                (up * right * left == 0) & (up * down * left == 0)
            drop = (p[..., 1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (turns == 1) & side
            if drop.any():
                image[..., 1:-1, 1:-1][drop] = 0
                removed = True
        if not removed:
            return image[..., 1:-1, 1:-1].astype(bool)


def drawn_along(middle: np.ndarray, pen: float, dtype: type = np.float64) -> np.ndarray:
    """A round pen `pen` pixels wide drawn along the `middle` lines (a mask, H x W), its edge a
    pixel soft: ink in [0, 1], computed in `dtype`."""
    if not middle.any():
        return np.zeros(middle.shape, dtype)
    distance = ndimage.distance_transform_edt(~middle).astype(dtype)
    return np.clip(dtype(pen / 2 + 0.5) - distance, 0, 1)


def fine_pen(images: Tensor, widths: Tensor, background: float) -> Tensor:
    """Each image (N, 1, H, W; bright ink on `background`) redrawn along its strokes' middle
    lines with a pen of its `widths` (N,) pixels, drawn at twice the resolution and averaged
    back down, at the image's own brightest level."""
    top = images.amax(dim=(1, 2, 3), keepdim=True)
    ink = (images - background) / (top - background).clamp_min(1e-6)
    big = F.interpolate(ink, scale_factor=2, mode="bilinear", align_corners=False)
    middle = skeleton((big[:, 0] > 0.5).cpu().numpy())
    drawn = np.stack([drawn_along(lines, 2 * float(width), np.float32)  # width at 2x
                      for lines, width in zip(middle, widths)])
    pen = torch.from_numpy(drawn).unsqueeze(1).to(images.device, images.dtype)
    small = F.avg_pool2d(pen, 2)
    small = small / small.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return background + small * (top - background)
