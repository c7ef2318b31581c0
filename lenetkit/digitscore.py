"""Whether an input holds a digit at all: a score in [0, 1] beside every MNIST prediction, and
the refusal of inputs that score below the model's calibrated threshold.

A classifier of ten digits answers one of them for anything it is shown, a letter or a
scribble included. Its logits still tell the two apart: on what it learned they are large and
one of them stands out; on anything else they are smaller and flatter, the more so once training
pushed its answers on non-digits toward uniform (outlier exposure, TrainConfig.negatives). The
raw score (the largest softmax probability, `msp`, or the logits' logsumexp, `energy`) is
mapped to [0, 1] by a logistic curve centred on the threshold, so that 0.5 is always the line
between read and refused, whichever raw score the model uses.

The threshold lives in the model record, as record["digit_score"] = {"score": name,
"threshold": raw value, "scale": raw spread}: training calibrates it on validation images
(calibrate), check_digit_score checks it when a model file is read. A record without one refuses
nothing.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# Each raw score: higher means more like the digits the model learned.
SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": lambda logits: torch.softmax(logits.float(), dim=1).amax(dim=1),
    "energy": lambda logits: torch.logsumexp(logits.float(), dim=1),
}
# The raw score that training calibrates, chosen on validation images (docs/nondigits.md).
DEFAULT_SCORE = "msp"
DIGIT_SCORE_KEYS = {"score", "threshold", "scale"}
# The share of the validation digits that the calibrated threshold keeps.
KEEP_DIGITS = 0.995
# Beyond this a raw score is no logit a trained network gives: a record holding one is damaged.
MAX_RAW_SCORE = 1e6
# A narrower spread would round to 0 in float32, and the score to NaN at the threshold.
MIN_SCALE = 1e-6


def raw_scores(name: str, logits: Tensor) -> Tensor:
    """The raw score `name` of each row of `logits` (N, classes)."""
    return SCORES[name](logits)


def judge(record: dict, logits: Tensor) -> tuple[Tensor, Tensor] | None:
    """(scores in [0, 1], refused) for each row of `logits` (N, classes), by the calibrated
    threshold in `record` (a model record); None when the record has none (nothing is refused)."""
    setting = record.get("digit_score")
    if setting is None:
        return None
    raw = raw_scores(setting["score"], logits.detach().cpu()).double()
    scores = torch.sigmoid((raw - setting["threshold"]) / setting["scale"]).float()
    return scores, raw < setting["threshold"]


def calibrate(name: str, digit_logits: Tensor, other_logits: Tensor | None = None,
              keep: float = KEEP_DIGITS) -> dict[str, Any]:
    """The record's digit_score for raw score `name`: the highest threshold that keeps at least
    `keep` of the (validation) digits, and a spread fitted so that the score is the chance of a
    digit on an even mix of those digits and the `other_logits` (validation non-digits); without
    them, the digits' own spread."""
    digits = raw_scores(name, digit_logits.detach().cpu()).double()
    ordered = digits.sort().values
    threshold = float(ordered[min(int(math.floor((1 - keep) * len(ordered))), len(ordered) - 1)])
    scale = float(digits.std()) if len(digits) > 1 else 1.0
    if other_logits is not None and len(other_logits):
        others = raw_scores(name, other_logits.detach().cpu()).double()
        scale = fit_scale(digits - threshold, others - threshold, scale)
    # A model that can't tell the two apart fits a spread without bound: kept finite and valid.
    return {"score": name, "threshold": threshold,
            "scale": min(max(scale, MIN_SCALE), MAX_RAW_SCORE)}


def fit_scale(digits: Tensor, others: Tensor, start: float) -> float:
    """The spread s for which sigmoid(x / s) best predicts digit (x of `digits`) against non-digit
    (x of `others`), each set weighed equally (the log-likelihood, maximized over log s)."""
    log_scale = torch.tensor(math.log(max(start, MIN_SCALE)), dtype=torch.float64,
                             requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale], max_iter=100)

    def loss() -> Tensor:
        optimizer.zero_grad()
        scale = log_scale.exp()
        value = (torch.nn.functional.softplus(-digits / scale).mean()
                 + torch.nn.functional.softplus(others / scale).mean())
        value.backward()
        return value

    optimizer.step(loss)
    scale = float(log_scale.detach().exp())
    return scale if math.isfinite(scale) else start


def check_digit_score(value: object, classes: int) -> str | None:
    """Why `value` (a model file's digit_score, untrusted) is unusable, or None when it is fine."""
    if not isinstance(value, dict) or set(value) != DIGIT_SCORE_KEYS:
        return f"must be a dict of {', '.join(sorted(DIGIT_SCORE_KEYS))}"
    if not isinstance(value["score"], str) or value["score"] not in SCORES:
        return f"score must be one of {', '.join(SCORES)}"
    numbers = [value[key] for key in ("threshold", "scale")]
    if not all(type(number) in (int, float) and -MAX_RAW_SCORE <= number <= MAX_RAW_SCORE
               for number in numbers):  # NaN fails the comparison; a huge int can't overflow
        return "threshold and scale must be finite numbers"
    low = 1 / classes if value["score"] == "msp" else -MAX_RAW_SCORE
    high = 1.0 if value["score"] == "msp" else MAX_RAW_SCORE
    if not low <= value["threshold"] <= high:
        return f"threshold must lie in [{low:.3g}, {high:.3g}] for {value['score']}"
    if value["scale"] < MIN_SCALE:
        return f"scale must be at least {MIN_SCALE:g}"
    return None
