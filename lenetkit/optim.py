"""The optimizers and what steps beside them: AdamW or SGD with its parameter groups, the learning
rate schedules, airbench's lookahead and the moving average of the weights."""

from collections.abc import Callable
from functools import partial
from typing import TypeAlias

import torch
from torch import Tensor, nn

from lenetkit.config import TrainConfig


class Lookahead:
    """airbench's lookahead: every EVERY steps the weights (and batch norm's statistics) are pulled
    back toward where the last pull left them, by a decay that grows as the cube of the run's
    progress: free early on, a strong average at the end."""
    EVERY, DECAY = 5, 0.95 ** 5

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.state = [t for t in model.state_dict().values() if t.is_floating_point()]  # views
        self.average = [t.clone() for t in self.state]
        self.total_steps = total_steps

    @torch.no_grad()
    def step(self, steps: int) -> None:
        """After the optimizer's `steps`-th step of the run."""
        if steps % self.EVERY == 0:
            decay = self.DECAY * (steps / self.total_steps) ** 3
            torch._foreach_lerp_(self.average, self.state, 1 - decay)
            torch._foreach_copy_(self.state, self.average)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to where the last pull left the weights: what is validated and saved."""
        torch._foreach_copy_(self.state, self.average)

    @torch.no_grad()
    def settle(self) -> None:
        """The average set to the weights, as after restore(): for a checkpoint's weights, saved
        at the end of an epoch, which restore() ended."""
        torch._foreach_copy_(self.average, self.state)


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW or SGD, and the schedule over the run's steps: one-cycle, triangle or constant."""
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adamw":
        fused = next(model.parameters()).device.type in ("cpu", "cuda")  # one kernel for all
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      betas=(config.beta1, config.beta2),
                                      weight_decay=config.weight_decay, fused=fused)
    else:
        optimizer = torch.optim.SGD(sgd_groups(model, config), momentum=config.momentum,
                                    nesterov=config.momentum > 0)
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total, cycle_momentum=config.cycle_momentum)
    factor = partial(triangle, total=total) if config.schedule == "triangle" else lambda _: 1.0
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


TRIANGLE = (0.2, 0.23, 0.07)  # airbench's: start, where the peak is, end (of the rate, the steps)


def triangle(step: int, total: int) -> float:
    """The learning rate's factor at `step` of `total`: up in a line from TRIANGLE's start to 1
    at its peak, then down in a line to its end."""
    start, at, end = TRIANGLE
    peak = int(at * total)
    if step < peak:
        return start + (1 - start) * step / peak
    return 1 - (1 - end) * (step - peak) / max(total - peak, 1)


BIAS_LR_SCALE = 64  # airbench's: batch norm's biases learn this much faster than the weights


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def sgd_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """SGD's parameter groups as airbench sets them (with batch norm's scales fixed at 1 by
    setup_training; the next layer can scale): batch norm's biases at BIAS_LR_SCALE times the
    learning rate with the weight decay divided by as much (the same decay a step), everything
    else at --lr."""
    biases = {id(norm.bias) for norm in batch_norms(model)}
    trained = [p for p in model.parameters() if p.requires_grad]
    return [dict(params=[p for p in trained if id(p) not in biases], lr=config.lr,
                 weight_decay=config.weight_decay),
            dict(params=[p for p in trained if id(p) in biases], lr=config.lr * BIAS_LR_SCALE,
                 weight_decay=config.weight_decay / BIAS_LR_SCALE)]


# The tensors AveragedModel hands its multi_avg_fn: the averaged ones, then the model's.
Tensors: TypeAlias = tuple[Tensor, ...] | list[Tensor]


def ema_update(decay: float) -> Callable[[Tensors, Tensors, Tensor | int], None]:
    """AveragedModel's update for an exponential moving average whose decay warms up as
    min(decay, (1 + n) / (10 + n)) after n steps (as TensorFlow's ExponentialMovingAverage does),
    so that a short run's average is not dragged back to the random initialization."""
    @torch.no_grad()
    def update(averaged: Tensors, current: Tensors, steps: Tensor | int) -> None:
        n = int(steps)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # batch norm's step counters
            torch._foreach_copy_(averaged, current)
    return update
