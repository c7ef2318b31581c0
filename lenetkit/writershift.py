"""The writer-shift benchmark: MNIST digits redrawn as other writers, pens and scanners would
have them (thicker and thinner strokes, slants both ways, low-resolution scans, a wobbly hand),
each kind a fixed, seeded transform; evaluation.py scores a model on each kind and their mean.

It is a proxy built from MNIST alone, for choosing recipes on the validation split and reporting
on the test split: the training augmentations (augmentation.py) are of the same families, drawn
at random, so it measures how well a model learned them rather than a truly new writer.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from lenetkit.augmentation import down_up, elastic, slant, stroke_width

# The digit fills the central 20x20 of MNIST's 28x28: a scan of the digit at 8x8 (16x16) pixels
# is the whole image at 28 * 8 / 20 (28 * 16 / 20) pixels. Neither size is in SCAN_SIZES, so
# training never sees these exact scans.
SCANS = {"scan8": round(28 * 8 / 20), "scan16": round(28 * 16 / 20)}
SLANT = 0.3  # of a pixel sideways for each pixel up: about 17 degrees
THIN = -0.5  # half a pixel's erosion on each side: a whole one erases MNIST's thinnest strokes
ELASTIC_ALPHA, ELASTIC_SIGMA = 34.0, 4.0  # Simard et al.'s distortion of MNIST
SEED = 20_261_206  # the elastic fields'; training's come from its own seed's generator

KINDS = ("thick", "thin", "slant-right", "slant-left", *SCANS, "elastic")


def shifted(pixels: Tensor, kind: str) -> Tensor:
    """The `kind` of writer shift of digits (N, 1, H, W), floats in 0..1 (ink 1, paper 0): the
    same images every time."""
    n = len(pixels)
    transforms: dict[str, Callable[[], Tensor]] = {
        "thick": lambda: stroke_width(pixels, torch.ones(n)),
        "thin": lambda: stroke_width(pixels, torch.full((n,), THIN)),
        "slant-right": lambda: slant(pixels, torch.full((n,), SLANT), 0.0),
        "slant-left": lambda: slant(pixels, torch.full((n,), -SLANT), 0.0),
        **{name: partial(down_up, pixels, size) for name, size in SCANS.items()},
        "elastic": lambda: elastic(pixels, torch.Generator().manual_seed(SEED), 0.0,
                                   ELASTIC_ALPHA, ELASTIC_SIGMA),
    }
    return transforms[kind]().clamp(0, 1)
