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
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lenetkit.augmentation import augment
from lenetkit.config import MODEL_SETTINGS, SETTINGS, TrainConfig, output_paths, parse_args
from lenetkit.datasets import DATASETS, black, load_dataset, normalize, split_indices, standardize
from lenetkit.detector import detected, detector_args, recipe_detector
from lenetkit.digitscore import DEFAULT_SCORE, calibrate
from lenetkit.environment import has_native_bf16, pick_device
from lenetkit.errors import UserError
from lenetkit.evaluation import evaluate
from lenetkit.model import DETECTED, CifarNet, build_model, count_parameters
from lenetkit.modelchoice import (
    check_replacement,
    replacement_conflict,
    run_path,
    shipped_note,
    shown_path,
)
from lenetkit.modelfile import (
    build_from_record,
    model_record,
    read_checkpoint,
    save_checkpoint,
    save_model,
)
from lenetkit.negatives import (
    TRAIN_SIZE,
    VAL_COUNTS,
    negative_inputs,
    negatives_cache,
    training_negatives,
)
from lenetkit.optim import Lookahead, batch_norms, ema_update, make_optimizer
from lenetkit.outputs import run_metadata, write_json
from lenetkit.plots import plot_history
from lenetkit.threads import MAX_THREADS, use_threads


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
    negatives: Tensor | None = None  # normalized non-digits: outlier exposure's, the detector's

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
    if compile:  # torch.compile wraps a module in an OptimizedModule, itself a module
        compiled = torch.compile(stepped)
        assert isinstance(compiled, nn.Module)
        stepped = compiled
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
        if config.negatives:  # half as many non-digits, in the same pass
            inputs = torch.cat([inputs, negative_batch(training, len(batch) // 2)])
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=training.amp):
            logits = training.stepped(inputs)
        logits, outlier_logits = logits[:len(batch)], logits[len(batch):]
        loss = F.cross_entropy(logits.float(), labels[batch],
                               label_smoothing=config.label_smoothing)
        if len(outlier_logits):
            loss = loss + config.negatives * uniform_loss(outlier_logits.float())
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


def negative_batch(training: Training, count: int) -> Tensor:
    """`count` of the training's non-digits, drawn by its generator."""
    assert training.negatives is not None
    picked = torch.randint(len(training.negatives), (max(count, 1),), generator=training.generator)
    return training.negatives[picked.to(training.negatives.device)]


def uniform_loss(logits: Tensor) -> Tensor:
    """Outlier exposure's term (Hendrycks et al., 2019): the cross-entropy from the uniform
    distribution to the softmax of `logits`, lowest when every class is as likely."""
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()


def load_negatives(config: TrainConfig, options: argparse.Namespace, device: torch.device,
                   log: Callable = print) -> Tensor:
    """The training split's non-digits (negatives.py), normalized as the digits, on `device`."""
    cache = negatives_cache(options.data_dir)
    if not cache.is_file():  # minutes of silence otherwise
        log(f"non-digits: drawing and framing the training split's, once (a few minutes; kept in "
            f"{cache.parent})")
    inputs = training_negatives(options.data_dir)
    x = normalize(inputs, **DATASETS[config.dataset].normalization).to(device)
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


def scored(best: dict, config: TrainConfig, training: Training, x_train: Tensor, x_val: Tensor,
           options: argparse.Namespace, device: torch.device, log: Callable) -> dict:
    """The record `best` given its digit score: first its detector (detector.py), for a run with
    one that has none yet (a resumed run may), then the score's calibrated setting."""
    if config.detector_epochs and best["arch"] != DETECTED:
        started = time.perf_counter()
        assert training.negatives is not None, "run loads them for a detector"
        detector = recipe_detector(x_train, training.negatives, config, training.generator,
                                   training.distort)
        best = with_detector(best, best["state_dict"], detector, config.detector_scale)
        seconds = time.perf_counter() - started
        best["metadata"] = {**best["metadata"], "detector_seconds": seconds}
        log(f"detector: {config.detector_epochs} epoch{'s' * (config.detector_epochs > 1)} in "
            f"{seconds:.1f}s")
    best["digit_score"] = calibrated_score(best, x_val, options.data_dir, device)
    log("digit score: {score}, refusing below {threshold:.4g} (spread {scale:.3g})".format(
        **best["digit_score"]))
    return best


def with_detector(record: dict, reader: dict[str, Tensor], detector: nn.Module,
                  scale: int) -> dict:
    """`record` as one network (DetectedLeNet) of its LeNet's weights `reader` and `detector`, of
    `scale` times LeNet-5's channels, in place of any detector it had."""
    model_args = {name: value for name, value in record["model_args"].items()
                  if name != "detector_scale"} | detector_args(scale)
    model = detected(reader, model_args, detector)
    return {**record, **model_record(model, DETECTED, model_args, record["dataset"],
                                     record["normalization"], record["classes"],
                                     record["metadata"])}


@torch.no_grad()
def calibrated_score(record: dict, x_val: Tensor, data_dir: Path, device: torch.device) -> dict:
    """The digit score's setting for the model of `record` (digitscore.py), calibrated on the
    validation digits `x_val` (normalized) and the validation split's non-digits: a detected
    LeNet's outputs give log p(a digit) as their energy, the others' their largest probability."""
    model = build_from_record(record, device)
    others = negative_inputs(VAL_COUNTS, "val", data_dir, TRAIN_SIZE).unsqueeze(1)
    others = standardize(others, **record["normalization"]).to(device)
    name = "energy" if record["arch"] == DETECTED else DEFAULT_SCORE
    return calibrate(name, model(x_val).cpu(), model(others).cpu())


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


def checkpoint_state(checkpoint: Path, written: bool) -> tuple[str, bool]:
    """What a stopped run leaves, and whether it can be resumed: read from the checkpoint on disk
    (an interrupt can land in the middle of saving, and only the file knows whether the new epoch
    made it), once this run has `written` it; a file left by an earlier run is not this run's."""
    try:
        if written:
            epoch = read_checkpoint(checkpoint, SETTINGS)["history"][-1]["epoch"]
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


def load_test_split(config: TrainConfig, options: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """The uint8 test images and their labels, read before training: a missing, short or corrupt
    test file stops the run before it trains, not once it has."""
    return load_dataset(options.data_dir, train=False, download=options.download,
                        dataset=config.dataset)


def main(argv: list[str] | None = None) -> None:
    config, options = parse_args(argv)
    use_threads(options.threads or checkpoint_threads(options))
    train(config, options)


def checkpoint_threads(options: argparse.Namespace) -> int | None:
    """A resumed run's threads: those it started with, since the order of its sums, so its
    weights, depend on them; None for a new run, or a checkpoint that does not say."""
    if not options.resume:
        return None
    threads = read_checkpoint(output_paths(options.out)["checkpoint"], SETTINGS).get("threads")
    return threads if type(threads) is int and 0 < threads <= MAX_THREADS else None


def train(config: TrainConfig, options: argparse.Namespace, report_test: bool = True) -> dict:
    """The run that `config` and `options` describe, on every process torchrun started; returns
    its metrics (settings, history, best epoch, and the test figures when `report_test`)."""
    rank, world, device = start_processes(options.device)
    try:
        metrics = run(config, options, rank, world, device, report_test)
        if world > 1:  # the others wait for rank 0's files: a process group torn down while a
            dist.barrier()  # peer still holds it can abort that peer (SIGABRT in gloo's threads)
        return metrics
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
    # its score is not known yet: the dataset, and whether it will have one. A resumed run with
    # no model at --out yet passed this check when it started, --force or not.
    if not options.dry_run and not (options.resume and not options.out.is_file()):
        check_replacement(options.out, config.dataset, 1.0 if config.val_size else None,
                          options.force, config.val_size)
    out = options.out if options.dry_run else run_path(options.out, options.force, options.resume)
    # the run's own files go to `out`; the default model, if elsewhere, is replaced at the end
    # only by a model that scores at least as well
    options = argparse.Namespace(**{**vars(options), "out": out,
                                    "replaces": options.out if out != options.out else None})
    if options.replaces is not None:
        log(f"note: {options.replaces.name} holds a model already: this run writes {out.name} "
            "(and its checkpoint, metrics and curves), and replaces it only if it scores at "
            "least as well")
    started = time.perf_counter()
    x_train, y_train, x_val, y_val = load_splits(config, options, device)
    test_split = load_test_split(config, options) if report_test and rank == 0 else None
    threads = torch.get_num_threads()
    on = f"{device} ({threads} thread{'s' * (threads > 1)})" if device.type == "cpu" else device
    log(f"data: {len(x_train):,} training and {len(x_val):,} validation images from "
        f"{options.data_dir} on {on} in {time.perf_counter() - started:.1f}s")
    steps_per_epoch = -(-(len(x_train) // world) // (config.batch_size // world))
    training = setup_training(config, steps_per_epoch, device, world, options.channels_last,
                              options.compile, images=x_train)
    drop_emulated_bf16(training, device, log)
    if config.negatives or config.detector_epochs:  # before training: a problem shows at once
        training.negatives = load_negatives(config, options, device, log)
    checkpoint = output_paths(options.out)["checkpoint"]
    history: list[dict] = []
    best: dict | None = None
    if options.resume:
        history, best = restore_checkpoint(read_checkpoint(checkpoint, SETTINGS), training)
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
        assert best is not None, "a run ends with an epoch kept: its first is an improvement"
        # Only a model that learned non-digits tells them apart; the others' low scores are
        # doubt, which the low-confidence mark already says
        if (config.negatives or config.detector_epochs) and len(x_val) and rank == 0 \
                and not options.dry_run:
            best = scored(best, config, training, x_train, x_val, options, device, log)
            save_checkpoint(checkpoint, config, training, history, best)  # the kept model's too
    except KeyboardInterrupt:
        state, resumable = checkpoint_state(checkpoint, written)
        resume = f"; continue with: python train.py --resume --out {options.out}"
        raise KeyboardInterrupt(state + (resume if resumable else "")) from None
    # room for the test set's normalized copy (its bytes were read before training): peak memory
    # stays training's
    del x_train, y_train, x_val, y_val
    return finish(config, options, history, best, rank, device, test_split)


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


def train_and_validate(epoch: int, config: TrainConfig, training: Training,
                       train_split: tuple[Tensor, Tensor], val_split: tuple[Tensor, Tensor],
                       rank: int, world: int) -> dict:
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


def save_best(best: dict, options: argparse.Namespace, metrics: dict) -> None:
    """Writes the best model to the run's file, and to the default model it was started beside
    (options.replaces) if it scores at least as well as the one there."""
    kept = (f"best epoch {metrics['best_epoch']} (val acc {metrics['val_accuracy']:.2%})"
            if metrics["val_accuracy"] is not None else
            f"last epoch {metrics['best_epoch']} (no validation)")
    save_model(best, options.out)
    print(f"{kept} saved to {shown_path(options.out)}; "
          f"training took {metrics['train_seconds']:.1f}s")
    scores = best["dataset"], metrics["val_accuracy"], best["metadata"].get("val_size")
    if options.replaces is not None:
        conflict = replacement_conflict(options.replaces, *scores)
        if conflict:
            print(f"note: {conflict}, so it stays (--force replaces it)", file=sys.stderr)
            return
        save_model(best, options.replaces)
        print(f"and to {shown_path(options.replaces)}, the default model, which it scores at "
              "least as well as")
    note = shipped_note(options.replaces or options.out, best, metrics["val_accuracy"])
    if note:
        print(f"note: {note}", file=sys.stderr)


def finish(config: TrainConfig, options: argparse.Namespace, history: list[dict], best: dict,
           rank: int, device: torch.device, test_split: tuple[Tensor, Tensor] | None) -> dict:
    """Saves the best model, reports its test accuracy (on `test_split`, when given), and writes
    the metrics and curves."""
    metrics = {"settings": asdict(config), "history": history,
               "best_epoch": best["metadata"]["best_epoch"],
               "val_accuracy": best["metadata"].get("val_accuracy"),  # None: none held out
               "train_seconds": sum(row["seconds"] for row in history),
               "threads": torch.get_num_threads()}  # with the seed, what the weights depend on
    if rank != 0:
        return metrics  # rank 0 writes the files
    if options.dry_run:
        print("dry run: the set-up works; nothing written")
        return metrics
    best["metadata"].update(epochs=config.epochs, train_seconds=metrics["train_seconds"])
    save_best(best, options, metrics)
    if test_split is not None:
        images, labels = test_split
        test = evaluate(build_from_record(best, device),
                        normalize(images, **best["normalization"]).to(device), labels.to(device))
        metrics["test"] = {"loss": test.loss, "accuracy": test.accuracy}
        print(f"test: loss {test.loss:.4f} acc {test.accuracy:.2%} "
              "(reported only; nothing was chosen on it)")
    paths = output_paths(options.out)
    write_json(paths["metrics"], metrics)
    plot_history(history, paths["curves"])
    return metrics
