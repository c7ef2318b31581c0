"""A run's settings: TrainConfig, the JSON recipes that set them, and the flags of train.py,
one for each setting, checked together."""

import argparse
import collections.abc
import inspect
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from lenetkit.augmentation import AUGMENTATIONS
from lenetkit.cli import (
    MAX_EPOCHS,
    add_data_dir,
    add_device,
    epoch_count,
    fraction,
    int_in_range,
    make_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
    writable_file,
)
from lenetkit.datasets import DATASETS, DEFAULT_VAL_SIZE
from lenetkit.environment import DEFAULT_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.inputs import parse_json, read_input_bytes
from lenetkit.model import ARCHITECTURES, MAX_SCALE, MAX_WIDTH, MIN_WIDTH, TRAINABLE
from lenetkit.modelfile import MODEL_SUFFIXES, read_checkpoint, shape_mismatch
from lenetkit.outputs import check_output_file


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


T = TypeVar("T")


def setting(default: T, group: str, **flag: object) -> T:
    """A TrainConfig field whose metadata is its flag's group in --help and argparse keywords: a
    recipe's value is checked by the same `type` and `choices` as the flag's."""
    return field(default=default, metadata={"group": group, **flag})


@dataclass
class TrainConfig:
    """The settings that define a run (the flags, and the keys of a recipe)."""
    dataset: str = setting("mnist", "data", choices=sorted(DATASETS),
                           help="the images to learn: handwritten digits, Zalando's clothing, or "
                                "colour photos of ten kinds of object")
    arch: str = setting("lenet", "model", choices=sorted(TRAINABLE),
                        help="network (model.py); default: the dataset's own, lenet (cifarnet for "
                             "cifar10)")
    width: int | None = setting(
        None, "model", type=lambda text: int_in_range(text, MIN_WIDTH, MAX_WIDTH),
        help="a stronger network's channels in its first stage, doubled in each of the next two "
             "(default: the network's own); cost grows with its square")
    logit_scale: float | None = setting(
        None, "model", type=positive_float,
        help="cifarnet: its logits multiplied by this (default 1); airbench's 1/9 keeps SGD's "
             "large steps from swamping the last layer")
    epochs: int = setting(8, "optimisation", type=epoch_count,
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
        "mirrored), flip (mirror), erase (random erasing), and other writers' ways: stroke "
        "(thinner or thicker strokes), slant, scan (a low-resolution scan) and elastic (a "
        "wobbly hand)")
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
                                          "images, for quick checks (default: all of them)")
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
    negatives: float = setting(0.0, "optimisation", type=non_negative_float,
                               help="mnist: weight of outlier exposure, a loss that pushes the "
                                    "answers on non-digits (letters, scribbles, textures, "
                                    "garments: negatives.py) toward uniform, so that the digit "
                                    "score refuses them; 0: off")
    detector_epochs: int = setting(0, "optimisation", type=lambda text: int_in_range(
                                       text, 0, MAX_EPOCHS),
                                   help="mnist lenet: after training, passes of a second LeNet "
                                        "that learns digits from non-digits (detector.py); its "
                                        "probability of a digit becomes the digit score; 0: none")
    detector_scale: int = setting(1, "optimisation", metavar=f"1-{MAX_SCALE}",
                                  type=lambda text: int_in_range(text, 1, MAX_SCALE),
                                  help="mnist lenet: the detector's channels and units, in times "
                                       "LeNet-5's")
    detector_pen: float = setting(0.0, "optimisation", type=fraction,
                                  help="mnist lenet: share of the detector's training images, "
                                       "digits and non-digits alike, whose strokes are drawn "
                                       "again with a fine pen (strokes.py), as a ballpoint's "
                                       "digit is framed; 0: none")


SETTINGS = tuple(entry.name for entry in fields(TrainConfig))


def flag_of(name: str) -> str:
    """The command-line flag of setting `name`: --logit-scale for logit_scale."""
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The flags: one for each setting of TrainConfig, and the options that are not settings (the
    files, the device, speed); a recipe can set only the former."""
    parser = make_parser("Train a model on MNIST, Fashion-MNIST or CIFAR-10 and keep the best "
                         "weights by validation accuracy.")
    parser.add_argument("--config", type=Path, metavar="RECIPE",
                        help="JSON file of settings (configs/, or tune.py's best.json) to start "
                             "from; flags given beside it win")
    groups = {name: parser.add_argument_group(name)
              for name in ("data", "model", "optimisation", "augmentation", "speed", "output")}
    for entry in fields(TrainConfig):
        flag = {key: value for key, value in entry.metadata.items() if key != "group"}
        groups[entry.metadata["group"]].add_argument(
            flag_of(entry.name), default=entry.default, **flag)
    add_data_dir(groups["data"])
    groups["data"].add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                                help="fetch missing dataset files from the internet")
    groups["speed"].add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                                 default=True, help="NHWC memory layout for the convolutions")
    groups["speed"].add_argument("--compile", action="store_true",
                                 help="torch.compile the model")
    add_device(groups["speed"])
    output = groups["output"]
    output.add_argument("--out", type=writable_file, default=DEFAULT_MODEL_PATH,
                        help="model file to write; the checkpoint, metrics and curves go beside "
                             "it")
    output.add_argument("--force", action="store_true",
                        help="replace mnist_model.pth even with a model of another dataset or "
                             "a worse validation score")
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
    if named.get("detector_epochs") == 0:  # no detector: the recipe's settings of one go
        recipe = {name: value for name, value in recipe.items() if name not in DETECTOR_SETTINGS}
    settings = recipe | named
    dataset = DATASETS[settings.get("dataset", TrainConfig.dataset)]
    arguments: dict[str, Any] = {"arch": dataset.arch} | settings
    config = TrainConfig(**arguments)
    # a full recipe (tune.py's best.json) states every setting: its defaults name nothing
    chosen = set(named) | {name for name, value in recipe.items()
                           if value != getattr(TrainConfig, name)}
    check_settings(parser, config, options, chosen)
    if options.resume:
        checkpoint = output_paths(options.out)["checkpoint"]
        config = resumed_config(config, set(recipe | named), checkpoint)
    return config, options


# A recipe of every setting is a few hundred bytes (tune.py's best.json); far larger is no recipe.
MAX_RECIPE_BYTES = 2**16
# A recipe is one object of plain values: a deeper value is refused by its setting's check, and
# the bound keeps an absurdly deep one from reaching the JSON parser.
RECIPE_NESTING = 8


def read_recipe(path: Path) -> dict:
    """The settings in a JSON recipe (as tune.py writes), each checked as its flag's value would
    be: a recipe can only set settings (never a path or another option)."""
    try:
        # utf-8-sig: Windows' Notepad starts the file with a byte-order mark
        text = read_input_bytes(path, MAX_RECIPE_BYTES, "a recipe").decode("utf-8-sig")
        recipe = parse_json(text, most_nesting=RECIPE_NESTING)
    except UserError as error:  # not a file, or too large: the line says which
        raise argparse.ArgumentTypeError(str(error)) from None
    except ValueError as error:
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
DETECTOR_SETTINGS = ("detector_scale", "detector_pen")  # the detector's, beyond its epochs


def foreign_settings(optimizer: str) -> set[str]:
    """The settings of the optimizers other than `optimizer`."""
    return set().union(*(own for name, own in OPTIMIZER_SETTINGS.items() if name != optimizer))


def check_settings(parser: argparse.ArgumentParser, config: TrainConfig,
                   options: argparse.Namespace,
                   named: collections.abc.Set[str] = frozenset()) -> None:
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
    if config.negatives and config.dataset != "mnist":
        parser.error(f"argument --negatives: its non-digits are for mnist models, not "
                     f"{config.dataset}")
    if config.detector_epochs and (config.dataset, config.arch) != ("mnist", "lenet"):
        parser.error(f"argument --detector-epochs: the detector is for mnist's lenet, not "
                     f"{config.dataset}'s {config.arch}")
    for name in DETECTOR_SETTINGS:
        if getattr(config, name) != getattr(TrainConfig, name) and not config.detector_epochs:
            parser.error(f"argument {flag_of(name)}: there is no detector without "
                         "--detector-epochs")
    if config.detector_epochs and not config.val_size:
        parser.error("argument --detector-epochs: its digit score is calibrated on the validation "
                     "split: --val-size 0 leaves none")
    if config.augment == "default":
        config.augment = DATASETS[config.dataset].augmentation
    if not options.download and not options.data_dir.is_dir():
        parser.error(f"argument --data-dir: {options.data_dir} is not a folder "
                     "(and --no-download is set)")
    if options.out in output_paths(options.out).values():
        parser.error(f"argument --out: {options.out} is the name of a file written beside the "
                     "model; give a name ending in .pth")
    if not options.out.name.lower().endswith(MODEL_SUFFIXES):
        parser.error(f"argument --out: {options.out}: a model file's name ends with "
                     f"{' or '.join(MODEL_SUFFIXES)} (save_model.py writes the other formats)")


def output_paths(out: Path) -> dict[str, Path]:
    """The files a run writes beside its model file, each one an output path that can be written."""
    paths = {"checkpoint": out.with_suffix(".ckpt"), "metrics": out.with_suffix(".metrics.json"),
             "curves": out.with_suffix(".curves.png")}
    return {name: check_output_file(path) for name, path in paths.items()}


def resumed_config(config: TrainConfig, named: set[str], checkpoint: Path) -> TrainConfig:
    """The checkpoint's settings; naming a different one is an error."""
    recorded = TrainConfig(**read_checkpoint(checkpoint, SETTINGS)["config"])
    for name in (name for name in SETTINGS if name in named):
        given, kept = getattr(config, name), getattr(recorded, name)
        if given != kept:
            raise UserError(f"{flag_of(name)} {given} differs from the checkpoint's "
                            f"{kept}; a resumed run keeps its own settings")
    return recorded
