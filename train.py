"""Train a model on MNIST (or Fashion-MNIST) and keep the best weights by validation accuracy.

    python train.py [--epochs N] [--seed S] [--data-dir data] [--out mnist_model.pth]
    python train.py --config configs/convnet.json   # a recipe tune.py wrote; flags given beside it win
    torchrun --nproc_per_node=N train.py ...    # the same run on N processes (DistributedDataParallel)

Writes, beside --out: the model file (best epoch by validation accuracy), a
training checkpoint `.ckpt` after every epoch (for --resume), the metrics history
`.metrics.json` and the curves `.curves.png`. The test set is read once, at the
end, to report the chosen model's accuracy: nothing is chosen on it.
"""

import argparse
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from common import (AUGMENTATIONS, DATASETS, DEFAULT_DATA_DIR, DEFAULT_MODEL_PATH, DEFAULT_VAL_SIZE,
                    DEVICE_HELP, UserError, augment, evaluate, fraction, int_in_range, load_dataset, make_parser,
                    non_negative_float, normalize, pick_device, positive_float, positive_int, run_cli,
                    seed, split_indices, writable_file)
from load_model import CHECKPOINT_FORMAT, FORMAT_VERSION, build_from_record, read_torch_file
from model import ARCHITECTURES, build_model, count_parameters
from outputs import check_output_file, write_json
from plots import plot_history
from save_model import model_record, run_metadata, save_atomic, save_model

# The settings that define a run: a resumed run takes them from its checkpoint.
RUN_SETTINGS = ("dataset", "arch", "width", "epochs", "batch_size", "lr", "schedule",
                "weight_decay", "label_smoothing", "augment", "ema", "val_size", "train_size",
                "seed", "amp", "beta1", "beta2", "cycle_momentum")


def augmentation_list(text: str) -> str:
    """`none`, `default` (the dataset's own) or a comma-separated list of AUGMENTATIONS, in their order."""
    if text in ("none", "default"):
        return text
    chosen = text.split(",")
    unknown = [name for name in chosen if name not in AUGMENTATIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown)!r}; "
                                         f"choose from {', '.join(AUGMENTATIONS)}, or none")
    return ",".join(name for name in AUGMENTATIONS if name in chosen)


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


def read_recipe(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The settings in a JSON recipe (as tune.py writes), each checked as its flag's value would be:
    a recipe can only set settings (never a path or another flag), and flags given beside it win."""
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"can't read {path}: {error}") from None
    if not isinstance(recipe, dict):
        raise argparse.ArgumentTypeError(f"{path} is not a JSON object of settings")
    actions = {action.dest: action for action in parser._actions if action.dest in RUN_SETTINGS}
    unknown = sorted(set(recipe) - set(actions))
    if unknown:
        raise argparse.ArgumentTypeError(f"{path}: unknown settings {unknown}; "
                                         f"known: {', '.join(RUN_SETTINGS)}")
    # null keeps the flag's default (all the training images, the network's own width)
    return {name: recipe_value(path, actions[name], value)
            for name, value in recipe.items() if value is not None}


def recipe_value(path: Path, action: argparse.Action, value: object) -> object:
    """One recipe value, held to what its flag accepts."""
    if action.nargs == "?" and isinstance(value, bool):  # true: the flag alone, as `--augment`
        return action.const if value else action.default
    wanted = "true or false" if action.nargs == 0 else "a number or a string"
    if (action.nargs == 0) != isinstance(value, bool) or not isinstance(value, (bool, int, float, str)):
        raise argparse.ArgumentTypeError(f"{path}: {action.dest} must be {wanted}, got {value!r}")
    if action.nargs == 0:
        return value
    try:
        value = action.type(str(value)) if action.type else str(value)
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{path}: {action.dest} {error}") from None
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(f"{path}: {action.dest} must be one of "
                                         f"{', '.join(map(str, action.choices))}, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, metavar="RECIPE",
                        help="JSON file of settings (configs/, or tune.py's best.json) to start from; "
                             "flags given beside it win")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                      help="the images to learn: handwritten digits, or Zalando's clothing photos")
    data.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                      help="dataset root holding MNIST/raw/ and FashionMNIST/raw/ "
                           "(default: data/ in the project folder)")
    data.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                      help="fetch missing dataset files from the internet")
    data.add_argument("--val-size", type=positive_int, default=DEFAULT_VAL_SIZE,
                      help="training images held out for validation (a fixed split)")
    data.add_argument("--train-size", type=positive_int,
                      help="train on only this many of the training split's images (quick checks)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), default="lenet",
                       help="network (model.py)")
    model.add_argument("--width", type=lambda text: int_in_range(text, 4, 512),
                       help="a stronger network's channels in its first stage, doubled in each of "
                            "the next two (default: the network's own); cost grows with its square")
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=positive_int, default=8,
                              help="passes over the training split")
    optimisation.add_argument("--batch-size", type=positive_int, default=256,
                              help="images per optimizer step (under torchrun: in all)")
    optimisation.add_argument("--lr", type=positive_float, default=0.01,
                              help="peak learning rate (AdamW)")
    optimisation.add_argument("--schedule", choices=["onecycle", "constant"], default="onecycle",
                              help="one-cycle warm-up then cosine decay, or constant --lr")
    optimisation.add_argument("--beta1", type=fraction, default=0.9,
                              help="AdamW's decay of its gradient average (replaced by the cycled one "
                                   "while --cycle-momentum is on)")
    optimisation.add_argument("--beta2", type=fraction, default=0.999,
                              help="AdamW's decay of its squared-gradient average")
    optimisation.add_argument("--cycle-momentum", action=argparse.BooleanOptionalAction, default=True,
                              help="with onecycle, cycle beta1 from 0.95 down to 0.85 and back, "
                                   "against the learning rate")
    optimisation.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                              help="AdamW's decoupled weight decay")
    optimisation.add_argument("--label-smoothing", type=fraction, default=0.0,
                              help="weight of the uniform distribution mixed into the targets")
    optimisation.add_argument("--ema", type=fraction, default=0.0,
                              help="decay of a moving average of the weights, updated every step; "
                                   "above 0 (e.g. 0.999) the average is validated and saved")
    optimisation.add_argument("--seed", type=seed, default=0,
                              help="seed of initialization, batch order and augmentation")
    augmentation = parser.add_argument_group("augmentation")
    augmentation.add_argument(
        "--augment", type=augmentation_list, nargs="?", const="default", default="none",
        metavar="LIST", help="distort every training batch: alone, as suits the dataset (mnist: "
        "affine; fashion-mnist: flip,erase); or a list of affine (rotation, scale, shear, shift), "
        "shift (whole pixels), flip (mirror) and erase (random erasing)")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--amp", action="store_true",
                       help="bfloat16 autocast for the forward pass (CUDA, or CPUs with "
                            "AVX512-BF16/AMX)")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="NHWC memory layout for the convolutions")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--device", default="auto", help=DEVICE_HELP)
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=writable_file, default=DEFAULT_MODEL_PATH,
                        help="model file to write; the checkpoint, metrics and curves go beside it "
                             "(default: mnist_model.pth in the project folder)")
    output.add_argument("--resume", action="store_true",
                        help="continue the run in the checkpoint beside --out, with its settings")
    output.add_argument("--dry-run", action="store_true",
                        help="check the set-up: a few batches of one epoch, nothing written")
    return parser


UNSET = object()  # marks the settings a command line (or recipe) did not name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings: flags, over a --config recipe, over the defaults. `args.explicit` names
    the settings asked for (on the command line or in the recipe), which --resume must not change."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(RUN_SETTINGS, UNSET)))
    recipe = {}
    if args.config is not None:
        try:
            recipe = read_recipe(args.config, parser)
        except argparse.ArgumentTypeError as error:
            parser.error(f"argument --config: {error}")
    args.explicit = {name for name in RUN_SETTINGS if getattr(args, name) is not UNSET} | set(recipe)
    for name in RUN_SETTINGS:
        if getattr(args, name) is UNSET:
            setattr(args, name, recipe.get(name, parser.get_default(name)))
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What no single flag can check: how the settings fit together."""
    widened = [name for name, network in ARCHITECTURES.items()
               if "width" in inspect.signature(network).parameters]
    if args.width is not None and args.arch not in widened:
        parser.error(f"argument --width: the {args.arch} has none "
                     f"(architectures with a width: {', '.join(widened)})")
    cycled = args.cycle_momentum and args.schedule == "onecycle"
    if cycled and args.beta1 != parser.get_default("beta1"):
        parser.error("argument --beta1: one-cycle replaces it with its own cycled value; "
                     "add --no-cycle-momentum to keep it")
    if args.augment == "default":
        args.augment = DATASETS[args.dataset].augmentation
    if not args.download and not args.data_dir.is_dir():
        parser.error(f"argument --data-dir: {args.data_dir} is not a folder (and --no-download is set)")
    if args.out in output_paths(args.out).values():
        parser.error(f"argument --out: {args.out} is the name of a file written beside the model; "
                     "give a name ending in .pth")


def output_paths(out: Path) -> dict[str, Path]:
    """The files a run writes beside its model file, each one an output path that can be written."""
    paths = {"checkpoint": out.with_suffix(".ckpt"), "metrics": out.with_suffix(".metrics.json"),
             "curves": out.with_suffix(".curves.png")}
    return {name: check_output_file(path) for name, path in paths.items()}


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                images: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator,
                description: str = "", amp: bool = False, rank: int = 0, world: int = 1,
                distort: Callable[[Tensor], Tensor] | None = None, label_smoothing: float = 0.0,
                ema: AveragedModel | None = None) -> tuple[float, float]:
    """One pass over `images` in a shuffled order; returns the mean loss and accuracy seen while training.
    With `amp`, the forward pass runs in bfloat16 autocast (the weights and optimizer stay float32);
    `distort`, if given, augments each batch;
    `ema`, if given, takes the weights into its moving average after every step.
    Across `world` processes, each takes a disjoint shard of the same seeded order and batch_size / world
    images a step, so a step still sees batch_size images; the returned figures cover all shards."""
    model.train()
    order = torch.randperm(len(images), generator=generator)
    order = order[:len(order) - len(order) % world][rank::world].to(images.device)  # equal steps on every rank
    batch_size //= world
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    progress = tqdm(range(0, len(order), batch_size), desc=description, leave=False,
                    disable=None if rank == 0 else True)  # None: a bar only in a terminal
    for step, start in enumerate(progress):
        batch = order[start:start + batch_size]
        inputs = distort(images[batch]) if distort is not None else images[batch]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels[batch], label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    if world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    return loss_sum.item() / (len(order) * world), correct.item() / (len(order) * world)


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


def evaluate_shards(model: nn.Module, images: Tensor, labels: Tensor, rank: int, world: int,
                    amp: bool = False) -> tuple[float, float]:
    """Loss and accuracy on `images`, each process scoring its shard and all agreeing on the sums."""
    if world == 1:
        result = evaluate(model, images, labels, amp=amp)
        return result.loss, result.accuracy
    shard = evaluate(model, images[rank::world], labels[rank::world], amp=amp)
    count = len(labels[rank::world])
    totals = torch.tensor([shard.loss * count, shard.accuracy * count, count], dtype=torch.float64,
                          device=images.device)
    dist.all_reduce(totals)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def make_optimizer(model: nn.Module, args: argparse.Namespace, steps_per_epoch: int):
    # The fused kernel updates all parameters in one pass: 1.2-1.3x faster steps at batch 64 on a 2-core CPU.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2),
                                  weight_decay=args.weight_decay, fused=fused)
    if args.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                        total_steps=args.epochs * steps_per_epoch,
                                                        cycle_momentum=args.cycle_momentum)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def resume_settings(args: argparse.Namespace, checkpoint: dict) -> None:
    """Takes the run's settings from its checkpoint; asking for a different one is an error."""
    for name, recorded in checkpoint["settings"].items():
        given = getattr(args, name)
        if name in args.explicit and given != recorded:
            raise UserError(f"--{name.replace('_', '-')} {given} differs from the checkpoint's "
                            f"{recorded}; a resumed run keeps its own settings")
        setattr(args, name, recorded)


def checkpoint_state(checkpoint: Path, written: bool) -> tuple[str, bool]:
    """What a stopped run leaves, and whether it can be resumed: read from the checkpoint on disk
    (an interrupt can land in the middle of saving, and only the file knows whether the new epoch
    made it), once this run has `written` it; a file left by an earlier run is not this run's."""
    try:
        if written:
            return f"{checkpoint} keeps epoch {read_torch_file(checkpoint)['history'][-1]['epoch']}", True
    except (UserError, KeyError, IndexError, TypeError):
        pass
    return "no epoch was finished, so there is no checkpoint to resume from", False


def main() -> None:
    train(parse_args())


def train(args: argparse.Namespace, report_test: bool = True) -> dict:
    """The run `args` describe (resumed from its checkpoint with --resume); returns its metrics
    (settings, history, best epoch, and the test figures when `report_test`)."""
    paths = output_paths(args.out)
    checkpoint = None
    if args.resume:
        checkpoint = read_torch_file(paths["checkpoint"])
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{paths['checkpoint']} is not a training checkpoint of this project")
        resume_settings(args, checkpoint)
    rank, world, device = start_processes(args.device)
    try:
        return run(args, paths, checkpoint, rank, world, device, report_test)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(args: argparse.Namespace, paths: dict[str, Path], checkpoint: dict | None, rank: int, world: int,
        device: torch.device, report_test: bool = True) -> dict:
    """The training run of one process: rank 0 of `world` alone prints and writes files."""
    log = print if rank == 0 else lambda *_: None
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is the global batch: it must divide evenly among "
                        f"{world} processes")
    torch.manual_seed(args.seed)

    started = time.perf_counter()
    dataset = DATASETS[args.dataset]
    images, labels = load_dataset(args.data_dir, train=True, download=args.download, dataset=args.dataset)
    train_indices, val_indices = split_indices(len(images), args.val_size)
    train_indices = train_indices[:args.train_size]
    if args.dry_run:
        train_indices, val_indices, args.epochs = train_indices[:3 * args.batch_size], val_indices[:500], 1
    normalization = dataset.normalization
    x_train, y_train = normalize(images[train_indices], **normalization).to(device), labels[train_indices].to(device)
    x_val, y_val = normalize(images[val_indices], **normalization).to(device), labels[val_indices].to(device)
    del images  # the uint8 copy: peak memory is what bounds training on small machines
    log(f"data: {len(x_train):,} training and {len(x_val):,} validation images from {args.data_dir} "
          f"on {device} in {time.perf_counter() - started:.1f}s")

    model_args = {"num_classes": len(dataset.classes), **({"width": args.width} if args.width else {})}
    model = build_model(args.arch, **model_args).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_train, x_val = (x.contiguous(memory_format=torch.channels_last) for x in (x_train, x_val))
    # Train through the DDP-wrapped or compiled module; save and validate the plain one, which shares its weights.
    trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    trained = torch.compile(trained) if args.compile else trained
    # The moving average of the weights (and of batch norm's statistics) is what gets validated and kept.
    ema = AveragedModel(model, multi_avg_fn=ema_update(args.ema), use_buffers=True) if args.ema else None
    kept = ema.module if ema is not None else model
    steps_per_epoch = -(-(len(x_train) // world) // (args.batch_size // world))
    optimizer, scheduler = make_optimizer(model, args, steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    background = -dataset.mean / dataset.std  # a black pixel, normalized: what affine distortions pad with
    distort = (lambda batch: augment(batch, args.augment, generator, background)) if args.augment != "none" else None
    history, best, written = [], None, checkpoint is not None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, best = checkpoint["history"], checkpoint["model"]
        log(f"resuming {paths['checkpoint']} after epoch {len(history)} of {args.epochs}")
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    log(f"model: {args.arch}, {count_parameters(model):,} parameters; "
        + ", ".join(f"{name} {value}" for name, value in settings.items() if name != "arch"))
    if world > 1:
        log(f"{world} processes ({dist.get_backend()}): global batch {args.batch_size}, "
            f"{args.batch_size // world} per process; peak learning rate {args.lr} for the global batch")

    try:  # a Ctrl-C anywhere in an epoch (training, validation or saving) says what the checkpoint holds
        for epoch in range(len(history) + 1, args.epochs + 1):
            epoch_started = time.perf_counter()
            train_loss, train_accuracy = train_epoch(trained, optimizer, scheduler, x_train, y_train,
                                                     args.batch_size, generator, f"epoch {epoch}/{args.epochs}",
                                                     args.amp, rank, world, distort, args.label_smoothing, ema)
            if not math.isfinite(train_loss):
                raise UserError(f"the training loss became {train_loss} in epoch {epoch}: training diverged; "
                                f"try a lower --lr ({checkpoint_state(paths['checkpoint'], written)[0]})")
            val_loss, val_accuracy = evaluate_shards(kept, x_val, y_val, rank, world, args.amp)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                   "val_loss": val_loss, "val_accuracy": val_accuracy}
            if ema is not None:  # the raw weights too, so that every run measures what the average adds
                row["raw_val_loss"], row["raw_val_accuracy"] = evaluate_shards(model, x_val, y_val, rank, world,
                                                                               args.amp)
            row["seconds"] = time.perf_counter() - epoch_started
            history.append(row)
            improved = best is None or val_accuracy > best["metadata"]["val_accuracy"]
            if improved:
                best = model_record(kept, args.arch, model_args, args.dataset, normalization, dataset.classes, {
                    **settings, "best_epoch": epoch, "val_accuracy": val_accuracy, "val_loss": val_loss,
                    **run_metadata()})
            raw = f" (raw weights {row['raw_val_accuracy']:.2%})" if ema is not None else ""
            log(f"epoch {epoch:2d}/{args.epochs}  train loss {train_loss:.4f} acc {train_accuracy:.2%}  "
                f"val loss {val_loss:.4f} acc {val_accuracy:.2%}{raw}{' *' if improved else '  '}  "
                f"{row['seconds']:.1f}s")
            if rank == 0 and not args.dry_run:
                written = True  # from here on, the file on disk says which epoch it keeps
                save_atomic({"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "settings": settings,
                             "model": best, "history": history,
                             "state_dict": {name: t.cpu() for name, t in model.state_dict().items()},
                             "ema": ema.state_dict() if ema is not None else None,
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "generator": generator.get_state(), "torch_rng": torch.get_rng_state()},
                            paths["checkpoint"])
    except KeyboardInterrupt:
        state, resumable = checkpoint_state(paths["checkpoint"], written)
        resume = f"; continue with: python train.py --resume --out {args.out}" if resumable else ""
        raise KeyboardInterrupt(state + resume) from None
    metrics = {"settings": settings, "history": history, "best_epoch": best["metadata"]["best_epoch"],
               "val_accuracy": best["metadata"]["val_accuracy"],
               "train_seconds": sum(row["seconds"] for row in history)}
    if rank != 0:
        return metrics  # rank 0 writes the files
    if args.dry_run:
        print("dry run: the set-up works; nothing written")
        return metrics

    del x_train, y_train, x_val, y_val  # make room for the test set: peak memory stays that of training
    best["metadata"]["epochs"] = args.epochs
    best["metadata"]["train_seconds"] = metrics["train_seconds"]
    save_model(best, args.out)
    print(f"best epoch {metrics['best_epoch']} (val acc {metrics['val_accuracy']:.2%}) "
          f"saved to {args.out}; training took {metrics['train_seconds']:.1f}s")
    if report_test:
        test_images, test_labels = load_dataset(args.data_dir, train=False, download=args.download,
                                                dataset=args.dataset)
        chosen = build_from_record(best, device)
        test = evaluate(chosen, normalize(test_images, **best["normalization"]).to(device), test_labels.to(device))
        metrics["test"] = {"loss": test.loss, "accuracy": test.accuracy}
        print(f"test: loss {test.loss:.4f} acc {test.accuracy:.2%} (reported only; nothing was chosen on it)")
    write_json(paths["metrics"], metrics)
    plot_history(history, paths["curves"])
    return metrics


if __name__ == "__main__":
    run_cli(main)
