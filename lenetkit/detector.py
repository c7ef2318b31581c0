"""The digit detector of a trained MNIST LeNet (model.DetectedLeNet): a second LeNet, of one
logit, that learns the training digits from the training split's non-digits (negatives.py).

It sees both through the reader's own augmentation, and a share of both drawn again with a fine
pen (TrainConfig.detector_pen), so that no distortion tells the two apart; as many non-digits as
digits in each batch. The reader's weights are left exactly as trained:
unlike outlier exposure (TrainConfig.negatives), a detector costs no accuracy. Its probability
of a digit is the digit score that training then calibrates (digitscore.py).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lenetkit.augmentation import on_share, uniform_between
from lenetkit.config import TrainConfig
from lenetkit.datasets import DATASETS, black
from lenetkit.model import DetectedLeNet, LeNet
from lenetkit.strokes import fine_pen

HYP = {
    "lr": 3e-3,  # AdamW's peak rate in a one-cycle schedule, as first tried: not tuned
    "weight_decay": 1e-4,  # a light hold on the weights; the augmentation does most regularizing
    # non-digits in a batch per digit: as many, where half as many let more fine-pen scribbles
    # pass for digits (chosen on validation, docs/photos.md)
    "negative_share": 1.0,
}
# A fine pen's widths at 28x28, in pixels (TrainConfig.detector_pen): a ballpoint's line as the
# preprocessing frames it, once widened to preprocess.MIN_PEN_SHARE of the digit.
FRAMED_PEN = (0.7, 1.3)


def train_detector(digits: Tensor, negatives: Tensor, epochs: int, batch_size: int,
                   generator: torch.Generator,
                   distort: Callable[[Tensor], Tensor] | None = None, scale: int = 1) -> nn.Module:
    """A LeNet of one logit (a digit: positive) and `scale` times LeNet-5's channels, trained for
    `epochs` passes over `digits` (normalized, N x 1 x 28 x 28) against `negatives` (normalized
    likewise), each batch through `distort`; its batches and negatives are drawn by `generator`."""
    detector = LeNet(num_classes=1, scale=scale).to(digits.device)
    starts = range(0, max(len(digits) - batch_size, 0) + 1, batch_size)  # whole batches only
    optimizer = torch.optim.AdamW(detector.parameters(), lr=HYP["lr"],
                                  weight_decay=HYP["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, HYP["lr"],
                                                   total_steps=epochs * len(starts))
    detector.train()
    for epoch in range(epochs):
        order = torch.randperm(len(digits), generator=generator).to(digits.device)
        for start in tqdm(starts, desc=f"detector {epoch + 1}/{epochs}", leave=False,
                          disable=None):
            shown = digits[order[start:start + batch_size]]
            others = max(int(len(shown) * HYP["negative_share"]), 1)
            picked = torch.randint(len(negatives), (others,), generator=generator)
            batch = torch.cat([shown, negatives[picked.to(negatives.device)]])
            batch = distort(batch) if distort is not None else batch
            is_digit = (torch.arange(len(batch), device=batch.device) < len(shown)).float()
            loss = F.binary_cross_entropy_with_logits(detector(batch).squeeze(1), is_digit)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return detector.eval()


def with_fine_pen(distort: Callable[[Tensor], Tensor] | None, share: float,
                  generator: torch.Generator, background: float) -> Callable[[Tensor], Tensor]:
    """`distort` (or nothing), then a random `share` of each batch, digits and non-digits alike
    (so that the pen's width does not tell them apart), redrawn with a fine pen (FRAMED_PEN) on
    the images' `background` level."""
    def pen(batch: Tensor) -> Tensor:
        widths = uniform_between(len(batch), generator, *FRAMED_PEN).float()
        return fine_pen(batch, widths, background)

    def distorted(batch: Tensor) -> Tensor:
        return on_share(distort(batch) if distort is not None else batch, generator, pen, share)

    return distorted


def recipe_detector(digits: Tensor, negatives: Tensor, config: TrainConfig,
                    generator: torch.Generator,
                    distort: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
    """The detector that `config` asks for (its detector_epochs, _scale and _pen), trained as
    train_detector trains one, a share of its batches drawn with a fine pen after `distort`."""
    if config.detector_pen:
        background = float(black(DATASETS[config.dataset]).flatten()[0])
        distort = with_fine_pen(distort, config.detector_pen, generator, background)
    return train_detector(digits, negatives, config.detector_epochs, config.batch_size,
                          generator, distort, scale=config.detector_scale)


def detected(reader_state: dict[str, Tensor], model_args: dict,
             detector: nn.Module) -> DetectedLeNet:
    """The one network of a trained LeNet (its `reader_state`) and its trained `detector`, built
    with `model_args` (DetectedLeNet's: the reader's, and the detector's scale where not 1)."""
    model = DetectedLeNet(**model_args)
    model.reader.load_state_dict(reader_state)
    model.detector.load_state_dict(detector.state_dict())
    return model.eval()


def detector_args(scale: int) -> dict:
    """DetectedLeNet's arguments beyond the reader's for a detector of `scale`: none for LeNet-5's
    own widths, as model files held before detectors could be wider."""
    return {"detector_scale": scale} if scale != 1 else {}
