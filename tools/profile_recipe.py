"""Where a recipe's training time goes on this machine: ms a step, the top operators, FLOPs a step
against the machine's measured arithmetic rate, and what bf16 autocast and channels_last change.

    python profile_recipe.py --config configs/fast.json [--steps 40] [--top 12]

Runs train.py's own loop (train_epoch, make_optimizer, the recipe's network and batch size)
on the first training images, after a warm-up, in this process alone: nothing is written. Any
train.py flag given after the recipe wins, as for train.py. Timings are only as quiet as the
machine: check `uptime` before trusting them.
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lenetkit.cli import make_parser, positive_int, run_cli
from lenetkit.config import TrainConfig
from lenetkit.config import parse_args as training_args
from lenetkit.datasets import DATASETS, load_dataset, normalize
from lenetkit.environment import has_native_bf16
from lenetkit.errors import UserError
from lenetkit.model import build_model
from lenetkit.training import Training, model_args, setup_training, train_epoch


def warmed_up(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor,
              channels_last: bool) -> tuple[Training, torch.Tensor]:
    """The recipe's network, optimizer and schedule as train.py builds them, and the images in the
    memory layout the run would use, after two steps: the first steps build oneDNN's kernels,
    which a run does once."""
    # Room for every step the timings take: where the schedule stands doesn't change a step's cost.
    steps = 4 * len(images) // config.batch_size
    training = setup_training(config, steps, images.device, channels_last=channels_last,
                                    images=images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    warm = 2 * config.batch_size
    train_epoch(training, images[:warm], labels[:warm], config)
    return training, images


def ms_per_step(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor,
                steps: int, channels_last: bool, repeats: int = 3) -> float:
    """The median over `repeats` of the mean milliseconds of a training step of train.py's loop."""
    training, images = warmed_up(config, images, labels, channels_last)
    subset = images[:steps * config.batch_size], labels[:steps * config.batch_size]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        train_epoch(training, *subset, config)
        timings.append(1000 * (time.perf_counter() - started) / steps)
    return statistics.median(timings)


def top_operators(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor,
                  steps: int, top: int, channels_last: bool) -> str:
    """torch.profiler's table of the operators that take the most time of `steps` steps."""
    training, images = warmed_up(config, images, labels, channels_last)
    subset = images[:steps * config.batch_size], labels[:steps * config.batch_size]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        train_epoch(training, *subset, config)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                         max_name_column_width=40)


def flops_per_step(config: TrainConfig) -> float:
    """Floating-point operations (a multiply-add counts 2) of one training step's forward and
    backward passes at the recipe's batch size, as torch.utils.flop_counter counts them."""
    model = build_model(config.arch, **model_args(config))
    images = torch.randn(config.batch_size, *DATASETS[config.dataset].shape)
    labels = torch.randint(0, len(DATASETS[config.dataset].classes), (config.batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def gflops(work, flops: float, repeats: int = 5) -> float:
    """GFLOP/s of `work` (which does `flops` operations): the median of `repeats` timed calls."""
    work()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return flops / statistics.median(timings) / 1e9


def machine_rates() -> dict[str, float]:
    """What this machine's float32 arithmetic reaches on friendly work: a 2048 x 2048 matmul, and
    a 3x3 convolution wide enough (64 -> 64 channels, 56 x 56, batch 32, channels_last) for its
    vector units."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * 32 * 64 * 64 * 9 * 56 * 56
    with torch.no_grad():
        return {"matmul 2048 fp32": gflops(lambda: a @ b, 2 * 2048 ** 3),
                "conv 3x3 64->64 56x56 fp32": gflops(lambda: conv(x), conv_flops)}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, TrainConfig,
                                         argparse.Namespace]:
    """This script's own flags, and the recipe's settings as train.py reads them."""
    parser = make_parser(__doc__.split("\n\n")[0], epilog="Other flags go to train.py.")
    parser.add_argument("--steps", type=positive_int, default=40, help="training steps timed")
    parser.add_argument("--top", type=positive_int, default=12, help="operators listed")
    own, rest = parser.parse_known_args(argv)
    return own, *training_args(rest)


def main() -> None:
    own, config, options = parse_args(sys.argv[1:])
    # Kineto, read when the first profile starts, logs a GPU it can't find as an ERROR line.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    images, labels = load_dataset(options.data_dir, train=True, download=options.download,
                                  dataset=config.dataset)
    count = (own.steps + 2) * config.batch_size
    if len(images) < count:
        raise UserError(f"{own.steps} steps of {config.batch_size} images, after two to warm "
                        f"up, need {count:,} training images; {options.data_dir} holds "
                        f"{len(images):,}")
    images = normalize(images[:count], **DATASETS[config.dataset].normalization)
    labels = labels[:count]
    print(f"{config.arch} (width {config.width or 'its own'}), batch {config.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    flops = flops_per_step(config)
    rates = machine_rates()
    print(f"\n{flops / 1e9:.3f} GFLOP a training step "
          f"({flops / config.batch_size / 1e6:.2f} MFLOP an image)")
    for name, rate in rates.items():
        print(f"{name:<28} {rate:7.1f} GFLOP/s")
    print(f"\nms a step ({own.steps} steps, median of 3), and the GFLOP/s it makes")
    for amp in (False, True):
        for channels_last in (False, True):
            ms = ms_per_step(replace(config, amp=amp), images, labels, own.steps, channels_last)
            layout = "channels_last" if channels_last else "NCHW"
            print(f"{'bf16 autocast' if amp else 'fp32':<14} {layout:<14} {ms:7.2f} ms  "
                  f"{flops / ms / 1e6:6.1f} GFLOP/s")
    config = replace(config, amp=config.amp and has_native_bf16(images.device))  # as train.py
    layout = "channels_last" if options.channels_last else "NCHW"
    print(f"\ntop operators by own time, {own.steps} steps as the recipe runs "
          f"({'bf16' if config.amp else 'fp32'}, {layout})")
    print(top_operators(config, images, labels, own.steps, own.top, options.channels_last))


if __name__ == "__main__":
    run_cli(main)
