"""Train a model on MNIST, Fashion-MNIST or CIFAR-10 and keep the best weights by validation
accuracy.

    python train.py [--epochs N] [--seed S] [--data-dir data] [--out mnist_model.pth]
    python train.py --config configs/convnet.json   # a recipe tune.py wrote; flags beside it win
    torchrun --nproc_per_node=N train.py ...    # the run on N processes (DistributedDataParallel)

Writes, beside --out: the model file (best epoch by validation accuracy; the last with
--val-size 0, which trains on every training image), a training checkpoint `.ckpt` after every
epoch (for --resume), the metrics history `.metrics.json` and the curves `.curves.png`. The test
set is read once, at the end, to report the chosen model's accuracy: nothing is chosen on it.

A run's settings are one TrainConfig: its defaults, then a JSON recipe's values, then the flags
given. The checkpoint stores them, and a resumed run keeps them.
"""

import argparse
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from augmentation import AUGMENTATIONS, augment
from common import (DATA_HELP, DEFAULT_DATA_DIR, DEFAULT_MODEL_PATH, DEVICE_HELP, UserError,
                    fraction, has_native_bf16, int_in_range, make_parser, non_negative_float,
                    non_negative_int, pick_device, positive_float, positive_int, run_cli, seed,
                    writable_file)
from datasets import (DATASETS, DEFAULT_VAL_SIZE, black, load_dataset, normalize,
                      split_indices)
from evaluate import evaluate
from load_model import CHECKPOINT_FORMAT, FORMAT_VERSION, build_from_record, read_torch_file
from model import ARCHITECTURES, CifarNet, build_model, count_parameters
from outputs import check_output_file, write_json
from plots import plot_history
from records import shape_mismatch
from save_model import model_record, run_metadata, save_atomic, save_model


def augmentation_list(text: str) -> str:
    """`none`, `default` (the dataset's own) or a comma-separated list of AUGMENTATIONS, kept in
    their order."""
    if text in ("none", "default"):
        return text
    chosen = text.split(",")
    unknown = [name for name in chosen if name not in AUGMENTATIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown)!r}; "
                                         f"choose from {', '.join(AUGMENTATIONS)}, or none")
    if {"shift", "reflect"} <= set(chosen):
        raise argparse.ArgumentTypeError("shift and reflect are the same moves with different "
                                         "edges: choose one")
    return ",".join(name for name in AUGMENTATIONS if name in chosen)


def setting(default: object, group: str, **flag: object) -> object:
    """A TrainConfig field whose metadata is its flag's group in --help and argparse keywords: a
    recipe's value is checked by the same `type` and `choices` as the flag's."""
    return field(default=default, metadata={"group": group, **flag})


@dataclass
class TrainConfig:
    """The settings that define a run (the flags, and the keys of a recipe)."""
    dataset: str = setting("mnist", "data", choices=sorted(DATASETS),
                           help="the images to learn: handwritten digits, Zalando's clothing, or "
                                "colour photos of ten kinds of object")
    arch: str = setting("lenet", "model", choices=sorted(ARCHITECTURES),
                        help="network (model.py); default: the dataset's own, lenet (cifarnet for "
                             "cifar10)")
    width: int | None = setting(
        None, "model", type=lambda text: int_in_range(text, 4, 512),
        help="a stronger network's channels in its first stage, doubled in each of the next two "
             "(default: the network's own); cost grows with its square")
    logit_scale: float | None = setting(
        None, "model", type=positive_float,
        help="cifarnet: its logits multiplied by this (default 1); airbench's 1/9 keeps SGD's "
             "large steps from swamping the last layer")
    epochs: int = setting(8, "optimisation", type=positive_int,
                          help="passes over the training split")
    batch_size: int = setting(256, "optimisation", type=positive_int,
                              help="images per optimizer step (under torchrun: in all)")
    lr: float = setting(0.01, "optimisation", type=positive_float,
                        help="peak learning rate (for SGD, of the batch's mean loss)")
    optimizer: str = setting("adamw", "optimisation", choices=["adamw", "sgd"],
                             help="AdamW, or SGD with Nesterov momentum as airbench trains: batch "
                                  "norm's scales stay 1 and its biases learn 64 times faster")
    momentum: float = setting(0.9, "optimisation", type=fraction,
                              help="SGD's Nesterov momentum (replaced by the cycled one while "
                                   "--cycle-momentum is on with onecycle)")
    schedule: str = setting("onecycle", "optimisation",
                            choices=["onecycle", "triangle", "constant"],
                            help="one-cycle warm-up then cosine decay; airbench's triangle (up "
                                 "from 0.2 --lr to --lr over the first 23%% of the steps, then "
                                 "down to 0.07 --lr); or constant --lr")
    weight_decay: float = setting(0.0, "optimisation", type=non_negative_float,
                                  help="AdamW's decoupled weight decay, or SGD's L2 penalty")
    label_smoothing: float = setting(0.0, "optimisation", type=fraction,
                                     help="weight of the uniform distribution mixed into the "
                                          "targets")
    augment: str = setting(
        "none", "augmentation", type=augmentation_list, nargs="?", const="default",
        metavar="LIST", help="distort every training batch: alone, as suits the dataset (mnist: "
        "affine; fashion-mnist: flip,erase; cifar10: shift,flip); or a list of affine (rotation, "
        "scale, shear, shift), shift (whole pixels, the edge black), reflect (the same, the edge "
        "mirrored), flip (mirror) and erase (random erasing)")
    ema: float = setting(0.0, "optimisation", type=fraction,
                         help="decay of a moving average of the weights, updated every step; "
                              "above 0 (e.g. 0.999) the average is validated and saved")
    lookahead: bool = setting(False, "optimisation", action=argparse.BooleanOptionalAction,
                              help="airbench's lookahead: every 5 steps the weights are pulled "
                                   "back toward where the last pull left them, harder as the run "
                                   "ends")
    val_size: int = setting(DEFAULT_VAL_SIZE, "data", type=non_negative_int,
                            help="training images held out for validation (a fixed split); 0 "
                                 "trains on them all, once a recipe is chosen, and keeps the "
                                 "last epoch")
    train_size: int | None = setting(None, "data", type=positive_int,
                                     help="train on only this many of the training split's "
                                          "images (quick checks)")
    seed: int = setting(0, "optimisation", type=seed,
                        help="seed of initialization, batch order and augmentation")
    amp: bool = setting(False, "speed", action=argparse.BooleanOptionalAction,
                        help="bfloat16 autocast for the forward pass where the device has bf16 "
                             "arithmetic (CUDA, CPUs with AVX512-BF16 or AMX); elsewhere a note, "
                             "and float32")
    whiten: bool = setting(True, "model", action=argparse.BooleanOptionalAction,
                           help="cifarnet: fix its first layer to whiten the training images' "
                                "2x2 patches (airbench's start) instead of learning it")
    beta1: float = setting(0.9, "optimisation", type=fraction,
                           help="AdamW's decay of its gradient average (replaced by the cycled "
                                "one while --cycle-momentum is on)")
    beta2: float = setting(0.999, "optimisation", type=fraction,
                           help="AdamW's decay of its squared-gradient average")
    cycle_momentum: bool = setting(True, "optimisation", action=argparse.BooleanOptionalAction,
                                   help="with onecycle, cycle beta1 (SGD: the momentum) from 0.95 "
                                        "down to 0.85 and back, against the learning rate")


SETTINGS = tuple(entry.name for entry in fields(TrainConfig))


def flag_of(name: str) -> str:
    """The command-line flag of setting `name`: --logit-scale for logit_scale."""
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The flags: one for each setting of TrainConfig, and the options that are not settings (the
    files, the device, speed); a recipe can set only the former."""
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, metavar="RECIPE",
                        help="JSON file of settings (configs/, or tune.py's best.json) to start "
                             "from; flags given beside it win")
    groups = {name: parser.add_argument_group(name)
              for name in ("data", "model", "optimisation", "augmentation", "speed", "output")}
    for entry in fields(TrainConfig):
        flag = {key: value for key, value in entry.metadata.items() if key != "group"}
        groups[entry.metadata["group"]].add_argument(
            flag_of(entry.name), default=entry.default, **flag)
    groups["data"].add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                                help=f"{DATA_HELP} (default: data/ in the project folder)")
    groups["data"].add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                                help="fetch missing dataset files from the internet")
    groups["speed"].add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                                 default=True, help="NHWC memory layout for the convolutions")
    groups["speed"].add_argument("--compile", action="store_true",
                                 help="torch.compile the model")
    groups["speed"].add_argument("--device", default="auto", help=DEVICE_HELP)
    output = groups["output"]
    output.add_argument("--out", type=writable_file, default=DEFAULT_MODEL_PATH,
                        help="model file to write; the checkpoint, metrics and curves go beside "
                             "it (default: mnist_model.pth in the project folder)")
    output.add_argument("--resume", action="store_true",
                        help="continue the run in the checkpoint beside --out, with its settings")
    output.add_argument("--dry-run", action="store_true",
                        help="check the set-up: a few batches of one epoch, nothing written")
    return parser


UNSET = object()  # marks the settings that the command line did not name


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's settings (flags, over a --config recipe, over the defaults; with --resume, the
    checkpoint's, which the settings named must match) and the other options."""
    parser = build_parser()
    options = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(SETTINGS, UNSET)))
    named = {name: vars(options).pop(name) for name in SETTINGS}
    named = {name: value for name, value in named.items() if value is not UNSET}
    try:
        recipe = read_recipe(options.config) if options.config is not None else {}
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --config: {error}")
    if "optimizer" in named:  # flags win: the recipe's settings of another optimizer go
        recipe = {name: value for name, value in recipe.items()
                  if name not in foreign_settings(named["optimizer"])}
    settings = recipe | named
    dataset = DATASETS.get(settings.get("dataset", TrainConfig.dataset))
    config = TrainConfig(**{"arch": dataset.arch} | settings)
    # a full recipe (tune.py's best.json) states every setting: its defaults name nothing
    chosen = set(named) | {name for name, value in recipe.items()
                           if value != getattr(TrainConfig, name)}
    check_settings(parser, config, options, chosen)
    if options.resume:
        checkpoint = output_paths(options.out)["checkpoint"]
        config = resumed_config(config, set(recipe | named), checkpoint)
    return config, options


def read_recipe(path: Path) -> dict:
    """The settings in a JSON recipe (as tune.py writes), each checked as its flag's value would
    be: a recipe can only set settings (never a path or another option)."""
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"can't read {path}: {error}") from None
    if not isinstance(recipe, dict):
        raise argparse.ArgumentTypeError(f"{path} is not a JSON object of settings")
    unknown = sorted(set(recipe) - set(SETTINGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"{path}: unknown settings {unknown}; "
                                         f"known: {', '.join(SETTINGS)}")
    known = {entry.name: entry for entry in fields(TrainConfig)}
    # null keeps the default (all the training images, the network's own width)
    return {name: recipe_value(path, known[name], value)
            for name, value in recipe.items() if value is not None}


def recipe_value(path: Path, entry: Field, value: object) -> object:
    """One recipe value, held to what its flag accepts."""
    flag, name = entry.metadata, entry.name
    switch = flag.get("action") in ("store_true", argparse.BooleanOptionalAction)
    if flag.get("nargs") == "?" and isinstance(value, bool):  # true: the flag alone (--augment)
        return flag["const"] if value else entry.default
    if switch != isinstance(value, bool) or not isinstance(value, (bool, int, float, str)):
        wanted = "true or false" if switch else "a number or a string"
        raise argparse.ArgumentTypeError(f"{path}: {name} must be {wanted}, got {value!r}")
    if switch:
        return value
    try:
        value = flag["type"](str(value)) if "type" in flag else str(value)
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{path}: {name} {error}") from None
    if "choices" in flag and value not in flag["choices"]:
        raise argparse.ArgumentTypeError(f"{path}: {name} must be one of "
                                         f"{', '.join(map(str, flag['choices']))}, got {value!r}")
    return value


OPTIMIZER_SETTINGS = {"adamw": {"beta1", "beta2"}, "sgd": {"momentum"}}  # each one's own
MODEL_SETTINGS = ("width", "logit_scale")  # passed to the networks that take them


def foreign_settings(optimizer: str) -> set[str]:
    """The settings of the optimizers other than `optimizer`."""
    return set().union(*(own for name, own in OPTIMIZER_SETTINGS.items() if name != optimizer))


def check_settings(parser: argparse.ArgumentParser, config: TrainConfig,
                   options: argparse.Namespace, named: set[str] = frozenset()) -> None:
    """What no single flag can check: how the settings and options fit together, and the
    settings `named` by the flags or the recipe. Resolves `--augment` alone to the dataset's own
    augmentation."""
    for name in MODEL_SETTINGS:
        having = [arch for arch, network in ARCHITECTURES.items()
                  if name in inspect.signature(network).parameters]
        if getattr(config, name) is not None and config.arch not in having:
            parser.error(f"argument {flag_of(name)}: the {config.arch} has none "
                         f"(architectures with a {name.replace('_', ' ')}: {', '.join(having)})")
    mismatch = shape_mismatch(config.arch, config.dataset)
    if mismatch:
        parser.error(f"argument --arch: {mismatch}")
    if not config.whiten and config.arch != "cifarnet":
        parser.error(f"argument --no-whiten: the {config.arch} has no whitened first layer "
                     "(only cifarnet has)")
    for name in sorted(named & foreign_settings(config.optimizer)):
        parser.error(f"argument --{name}: --optimizer {config.optimizer} has none")
    cycled = config.cycle_momentum and config.schedule == "onecycle"
    momentum = "beta1" if config.optimizer == "adamw" else "momentum"
    if cycled and getattr(config, momentum) != getattr(TrainConfig, momentum):
        parser.error(f"argument --{momentum}: one-cycle replaces it with its own cycled value; "
                     "add --no-cycle-momentum to keep it")
    if config.augment == "default":
        config.augment = DATASETS[config.dataset].augmentation
    if not options.download and not options.data_dir.is_dir():
        parser.error(f"argument --data-dir: {options.data_dir} is not a folder "
                     "(and --no-download is set)")
    if options.out in output_paths(options.out).values():
        parser.error(f"argument --out: {options.out} is the name of a file written beside the "
                     "model; give a name ending in .pth")


def output_paths(out: Path) -> dict[str, Path]:
    """The files a run writes beside its model file, each one an output path that can be written."""
    paths = {"checkpoint": out.with_suffix(".ckpt"), "metrics": out.with_suffix(".metrics.json"),
             "curves": out.with_suffix(".curves.png")}
    return {name: check_output_file(path) for name, path in paths.items()}


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


@dataclass
class Training:
    """What a run steps, epoch after epoch."""
    model: nn.Module  # the plain network: validated and saved
    stepped: nn.Module  # what batches go through: the model, wrapped for torchrun or compiled
    ema: AveragedModel | None  # the moving average of the weights, when asked for
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the batch order's and the augmentation's randomness
    distort: Callable[[Tensor], Tensor] | None  # the augmentation of a batch
    amp: bool = False  # bf16 autocast in training and validation
    lookahead: Lookahead | None = None  # airbench's lookahead, when asked for

    @property
    def kept(self) -> nn.Module:
        """The weights that are validated and saved: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def model_args(config: TrainConfig) -> dict:
    """The network's keyword arguments (model.py), as model files store them."""
    return {"num_classes": len(DATASETS[config.dataset].classes),
            **{name: getattr(config, name) for name in MODEL_SETTINGS
               if getattr(config, name) is not None}}


WHITENING_IMAGES = 5000  # as airbench: enough for a 12x12 covariance, and quick


def setup_training(config: TrainConfig, steps_per_epoch: int, device: torch.device,
                   world: int = 1, channels_last: bool = True, compile: bool = False,
                   images: Tensor | None = None) -> Training:
    """The seeded network, its optimizer and schedule, and the generator of batches. A network
    that starts from the data (CifarNet's whitening) is shown the first of the training `images`."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, **model_args(config)).to(device)
    if config.whiten and isinstance(model, CifarNet):
        if images is None:
            raise ValueError("a whitened cifarnet starts from the training images: pass images")
        model.whiten(images[:WHITENING_IMAGES])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.optimizer == "sgd":  # before DDP, which notes what needs gradients when built
        for norm in batch_norms(model):
            norm.weight.requires_grad_(False)
    stepped = model
    if world > 1:
        devices = [device] if device.type == "cuda" else None
        stepped = DistributedDataParallel(model, device_ids=devices)
    stepped = torch.compile(stepped) if compile else stepped
    ema = None
    if config.ema:  # batch norm's statistics are averaged too
        ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    lookahead = Lookahead(model, config.epochs * steps_per_epoch) if config.lookahead else None
    generator = torch.Generator().manual_seed(config.seed)
    distort = None
    if config.augment != "none":
        background = black(DATASETS[config.dataset])
        distort = lambda batch: augment(batch, config.augment, generator, background)  # noqa: E731
    return Training(model, stepped, ema, optimizer, scheduler, generator, distort, config.amp,
                    lookahead)


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW or SGD, and the schedule over the run's steps: one-cycle, triangle or constant."""
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


def ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """AveragedModel's update for an exponential moving average whose decay warms up as
    min(decay, (1 + n) / (10 + n)) after n steps (as TensorFlow's ExponentialMovingAverage does),
    so that a short run's average is not dragged back to the random initialization."""
    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], steps: Tensor) -> None:
        n = steps.item()
        weight = 1 - min(decay, (1 + n) / (10 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # batch norm's step counters
            torch._foreach_copy_(averaged, current)
    return update


def train_epoch(training: Training, images: Tensor, labels: Tensor, config: TrainConfig,
                description: str = "", rank: int = 0, world: int = 1) -> tuple[float, float]:
    """One pass over `images` in a shuffled order, `config.batch_size` images a step; returns the
    mean loss and accuracy seen while training. Across `world` processes, each takes a disjoint
    shard of the same seeded order and its share of every batch; the figures cover all shards."""
    training.stepped.train()
    order = torch.randperm(len(images), generator=training.generator)
    order = order[:len(order) - len(order) % world][rank::world].to(images.device)  # equal steps
    batch_size = config.batch_size // world
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    progress = tqdm(range(0, len(order), batch_size), desc=description, leave=False,
                    disable=None if rank == 0 else True)  # None: a bar only in a terminal
    for step, start in enumerate(progress):
        batch = order[start:start + batch_size]
        inputs = images[batch] if training.distort is None else training.distort(images[batch])
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=training.amp):
            logits = training.stepped(inputs)
        loss = F.cross_entropy(logits.float(), labels[batch],
                               label_smoothing=config.label_smoothing)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        training.scheduler.step()
        if training.lookahead is not None:
            training.lookahead.step(training.scheduler.last_epoch)
        if training.ema is not None:
            training.ema.update_parameters(training.model)
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    if training.lookahead is not None:
        training.lookahead.restore()
    if world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    return loss_sum.item() / (len(order) * world), correct.item() / (len(order) * world)


def evaluate_shards(model: nn.Module, images: Tensor, labels: Tensor, rank: int, world: int,
                    amp: bool = False) -> tuple[float, float]:
    """Loss and accuracy on `images`, each process scoring its shard, all agreeing on the sums."""
    if world == 1:
        result = evaluate(model, images, labels, amp=amp)
        return result.loss, result.accuracy
    shard = evaluate(model, images[rank::world], labels[rank::world], amp=amp)
    count = len(labels[rank::world])
    totals = torch.tensor([shard.loss * count, shard.accuracy * count, count],
                          dtype=torch.float64, device=images.device)
    dist.all_reduce(totals)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def save_checkpoint(path: Path, config: TrainConfig, training: Training, history: list[dict],
                    best: dict) -> None:
    """All a resumed run needs to go on as if it had never stopped."""
    save_atomic({"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "config": asdict(config),
                 "model": best, "history": history,
                 "state_dict": {name: t.cpu() for name, t in training.model.state_dict().items()},
                 "ema": training.ema.state_dict() if training.ema is not None else None,
                 "optimizer": training.optimizer.state_dict(),
                 "scheduler": training.scheduler.state_dict(),
                 "generator": training.generator.get_state(), "torch_rng": torch.get_rng_state()},
                path)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint that save_checkpoint wrote."""
    checkpoint = read_torch_file(path)
    config = checkpoint.get("config")
    if checkpoint.get("format") != CHECKPOINT_FORMAT or not isinstance(config, dict) \
            or set(config) != set(SETTINGS):
        raise UserError(f"{path} is not a training checkpoint of this version of the project")
    return checkpoint


def restore_checkpoint(checkpoint: dict, training: Training) -> tuple[list[dict], dict]:
    """Puts `training` back as save_checkpoint found it; returns the history and the best model."""
    training.model.load_state_dict(checkpoint["state_dict"])
    if training.ema is not None:
        training.ema.load_state_dict(checkpoint["ema"])
    if training.lookahead is not None:
        training.lookahead.settle()
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scheduler.load_state_dict(checkpoint["scheduler"])
    training.generator.set_state(checkpoint["generator"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return checkpoint["history"], checkpoint["model"]


def resumed_config(config: TrainConfig, named: set[str], checkpoint: Path) -> TrainConfig:
    """The checkpoint's settings; naming a different one is an error."""
    recorded = TrainConfig(**read_checkpoint(checkpoint)["config"])
    for name in (name for name in SETTINGS if name in named):
        given, kept = getattr(config, name), getattr(recorded, name)
        if given != kept:
            raise UserError(f"{flag_of(name)} {given} differs from the checkpoint's "
                            f"{kept}; a resumed run keeps its own settings")
    return recorded


def checkpoint_state(checkpoint: Path, written: bool) -> tuple[str, bool]:
    """What a stopped run leaves, and whether it can be resumed: read from the checkpoint on disk
    (an interrupt can land in the middle of saving, and only the file knows whether the new epoch
    made it), once this run has `written` it; a file left by an earlier run is not this run's."""
    try:
        if written:
            epoch = read_checkpoint(checkpoint)["history"][-1]["epoch"]
            return f"{checkpoint} keeps epoch {epoch}", True
    except (UserError, KeyError, IndexError, TypeError):
        pass
    return "no epoch was finished, so there is no checkpoint to resume from", False


def start_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process: under torchrun, joins the process group
    (nccl on CUDA, one GPU a process; gloo on the CPU); otherwise (0, 1, the chosen device)."""
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def load_splits(config: TrainConfig, options: argparse.Namespace,
                device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The normalized training and validation images and their labels, on `device`."""
    images, labels = load_dataset(options.data_dir, train=True, download=options.download,
                                  dataset=config.dataset)
    train_indices, val_indices = split_indices(len(images), config.val_size)
    train_indices = train_indices[:config.train_size]
    if options.dry_run:
        train_indices, val_indices = train_indices[:3 * config.batch_size], val_indices[:500]
    normalization = DATASETS[config.dataset].normalization
    x_train, x_val = (normalize(images[indices], **normalization).to(device)
                      for indices in (train_indices, val_indices))
    if options.channels_last:
        x_train, x_val = (x.contiguous(memory_format=torch.channels_last) for x in (x_train, x_val))
    return x_train, labels[train_indices].to(device), x_val, labels[val_indices].to(device)


def main() -> None:
    train(*parse_args())


def train(config: TrainConfig, options: argparse.Namespace, report_test: bool = True) -> dict:
    """The run that `config` and `options` describe, on every process torchrun started; returns
    its metrics (settings, history, best epoch, and the test figures when `report_test`)."""
    rank, world, device = start_processes(options.device)
    try:
        return run(config, options, rank, world, device, report_test)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(config: TrainConfig, options: argparse.Namespace, rank: int, world: int,
        device: torch.device, report_test: bool = True) -> dict:
    """The training run of one process: rank 0 of `world` alone prints and writes files."""
    log = print if rank == 0 else lambda *_: None
    if config.batch_size % world:
        raise UserError(f"--batch-size {config.batch_size} is the global batch: it must divide "
                        f"evenly among {world} processes")
    config = replace(config, epochs=1) if options.dry_run else config
    started = time.perf_counter()
    x_train, y_train, x_val, y_val = load_splits(config, options, device)
    log(f"data: {len(x_train):,} training and {len(x_val):,} validation images from "
        f"{options.data_dir} on {device} in {time.perf_counter() - started:.1f}s")
    steps_per_epoch = -(-(len(x_train) // world) // (config.batch_size // world))
    training = setup_training(config, steps_per_epoch, device, world, options.channels_last,
                              options.compile, images=x_train)
    drop_emulated_bf16(training, device, log)
    checkpoint = output_paths(options.out)["checkpoint"]
    history, best = [], None
    if options.resume:
        history, best = restore_checkpoint(read_checkpoint(checkpoint), training)
        log(f"resuming {checkpoint} after epoch {len(history)} of {config.epochs}")
    describe(config, training, world, log)
    written = options.resume  # from then on, the file on disk says which epoch it keeps
    try:  # a Ctrl-C anywhere in an epoch (training, validation, saving) says what the file keeps
        for epoch in range(len(history) + 1, config.epochs + 1):
            row = train_and_validate(epoch, config, training, (x_train, y_train), (x_val, y_val),
                                     rank, world)
            if not math.isfinite(row["train_loss"]):
                raise UserError(f"the training loss became {row['train_loss']} in epoch {epoch}: "
                                f"training diverged; try a lower --lr "
                                f"({checkpoint_state(checkpoint, written)[0]})")
            history.append(row)
            improved = improves(row, best)
            best = best_model(config, training, row) if improved else best
            log(epoch_line(row, config, improved))
            if rank == 0 and not options.dry_run:
                written = True
                save_checkpoint(checkpoint, config, training, history, best)
    except KeyboardInterrupt:
        state, resumable = checkpoint_state(checkpoint, written)
        resume = f"; continue with: python train.py --resume --out {options.out}"
        raise KeyboardInterrupt(state + (resume if resumable else "")) from None
    del x_train, y_train, x_val, y_val  # room for the test set: peak memory stays training's
    return finish(config, options, history, best, rank, device, report_test)


def drop_emulated_bf16(training: Training, device: torch.device, log: Callable) -> None:
    """bf16 autocast only where the device does bf16 arithmetic: elsewhere it is emulated and
    slower than float32, so the run says so and trains in float32 (the recipe's setting stays)."""
    if training.amp and not has_native_bf16(device):
        cpu = device.type == "cpu"
        what, needs = ("CPU", "AVX512-BF16 or AMX") if cpu else ("GPU", "Ampere or later")
        log(f"note: this {what} has no bf16 instructions ({needs}), where bf16 autocast is slower "
            "than float32: training in float32")
        training.amp = False


def describe(config: TrainConfig, training: Training, world: int, log: Callable) -> None:
    """The run's network and settings, and how it is shared among processes."""
    log(f"model: {config.arch}, {count_parameters(training.model):,} parameters; "
        + ", ".join(f"{name} {value}" for name, value in asdict(config).items() if name != "arch"))
    if world > 1:
        log(f"{world} processes ({dist.get_backend()}): global batch {config.batch_size}, "
            f"{config.batch_size // world} per process; peak learning rate {config.lr} for the "
            "global batch")


def train_and_validate(epoch: int, config: TrainConfig, training: Training, train_split: tuple,
                       val_split: tuple, rank: int, world: int) -> dict:
    """One epoch of training, then validation: the epoch's row of the history."""
    started = time.perf_counter()
    train_loss, train_accuracy = train_epoch(training, *train_split, config,
                                             f"epoch {epoch}/{config.epochs}", rank, world)
    if not math.isfinite(train_loss):
        return {"epoch": epoch, "train_loss": train_loss}
    row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy}
    if len(val_split[0]):  # none held out (--val-size 0): nothing to validate
        row["val_loss"], row["val_accuracy"] = evaluate_shards(training.kept, *val_split, rank,
                                                               world, training.amp)
        if training.ema is not None:  # the raw weights too: what the average adds, every run
            row["raw_val_loss"], row["raw_val_accuracy"] = evaluate_shards(
                training.model, *val_split, rank, world, training.amp)
    row["seconds"] = time.perf_counter() - started
    return row


def improves(row: dict, best: dict | None) -> bool:
    """Whether the epoch of `row` is kept over `best`: by validation accuracy, or, with nothing
    validated, as the later one."""
    return (best is None or "val_accuracy" not in row
            or row["val_accuracy"] > best["metadata"]["val_accuracy"])


def best_model(config: TrainConfig, training: Training, row: dict) -> dict:
    """The model record of the weights kept after the epoch of `row`."""
    dataset = DATASETS[config.dataset]
    return model_record(training.kept, config.arch, model_args(config), config.dataset,
                        dataset.normalization, dataset.classes, {
                            **asdict(config), "best_epoch": row["epoch"],
                            **{key: row[key] for key in ("val_accuracy", "val_loss") if key in row},
                            "bf16": training.amp, **run_metadata()})


def epoch_line(row: dict, config: TrainConfig, improved: bool) -> str:
    """An epoch's line of the log; `*` marks the weights now kept (a new best; with nothing
    validated, every epoch's)."""
    raw = f" (raw weights {row['raw_val_accuracy']:.2%})" if "raw_val_accuracy" in row else ""
    val = (f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}{raw}"
           if "val_accuracy" in row else "no validation")
    return (f"epoch {row['epoch']:2d}/{config.epochs}  train loss {row['train_loss']:.4f} acc "
            f"{row['train_accuracy']:.2%}  {val}{' *' if improved else '  '}  "
            f"{row['seconds']:.1f}s")


def finish(config: TrainConfig, options: argparse.Namespace, history: list[dict], best: dict,
           rank: int, device: torch.device, report_test: bool) -> dict:
    """Saves the best model, reports its test accuracy, and writes the metrics and curves."""
    metrics = {"settings": asdict(config), "history": history,
               "best_epoch": best["metadata"]["best_epoch"],
               "val_accuracy": best["metadata"].get("val_accuracy"),  # None: none held out
               "train_seconds": sum(row["seconds"] for row in history)}
    if rank != 0:
        return metrics  # rank 0 writes the files
    if options.dry_run:
        print("dry run: the set-up works; nothing written")
        return metrics
    best["metadata"].update(epochs=config.epochs, train_seconds=metrics["train_seconds"])
    save_model(best, options.out)
    kept = (f"best epoch {metrics['best_epoch']} (val acc {metrics['val_accuracy']:.2%})"
            if metrics["val_accuracy"] is not None else
            f"last epoch {metrics['best_epoch']} (no validation)")
    print(f"{kept} saved to {options.out}; training took {metrics['train_seconds']:.1f}s")
    if report_test:
        images, labels = load_dataset(options.data_dir, train=False, download=options.download,
                                      dataset=config.dataset)
        test = evaluate(build_from_record(best, device),
                        normalize(images, **best["normalization"]).to(device), labels.to(device))
        metrics["test"] = {"loss": test.loss, "accuracy": test.accuracy}
        print(f"test: loss {test.loss:.4f} acc {test.accuracy:.2%} "
              "(reported only; nothing was chosen on it)")
    paths = output_paths(options.out)
    write_json(paths["metrics"], metrics)
    plot_history(history, paths["curves"])
    return metrics


if __name__ == "__main__":
    run_cli(main)
