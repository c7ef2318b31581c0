"""Measure the pipeline's speed and memory, against the usual PyTorch MNIST pipeline, in one run.

    python bench.py [--data-dir data] [--dataset mnist] [--out bench.json]
    python bench.py --quick    # checks that it runs; writes runs/bench-quick.json
    python bench.py --photos [--count 300]   # reading digits from photos: accuracy and latency
    python bench.py --time-to-accuracy --out runs/time.json   # 99% in how many seconds
    python bench.py --crowded [--out runs/crowded.json]   # beside 0, 1 and 3 busy processes

Prints one table and writes it as JSON. Everything runs on the same machine in
the same run, so the ratios hold on a noisy machine. --quick (a subset, few
steps) is what CI runs so the benchmark never rots; the full run is for people.
The measurements themselves are measurements.py's; this script runs them and prints the tables.
"""

import argparse
import contextlib
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from lenetkit.cli import MODEL_HELP, add_data_dir, make_parser, positive_int, run_cli, writable_file
from lenetkit.config import TrainConfig, read_recipe
from lenetkit.datasets import DATASETS, load_dataset, normalize, training_indices
from lenetkit.environment import PROJECT_DIR, default_model_path
from lenetkit.errors import UserError
from lenetkit.export import calibration_images
from lenetkit.modelfile import read_model_file
from lenetkit.onnxfiles import export_onnx
from lenetkit.outputs import run_metadata, write_json
from lenetkit.prediction import load_model
from lenetkit.threads import usable_cpus

import photos
from crowded import crowded_rows, print_rows, workloads
from examples_mnist import train_examples_recipe
from measurements import (
    conventional_throughput,
    inference_speed,
    matmul_gflops,
    max_difference,
    median_of,
    nondigit_refusals,
    number_accuracy,
    our_throughput,
    phone_jpeg,
    photo_accuracy,
    prediction_latency,
    small_digit_accuracy,
    time_to_accuracy,
    training_flops_per_image,
    training_run,
)


def photo_benchmark(model_path: Path, data_dir: Path, count: int, calls: int,
                    split: str = "test") -> dict:
    """Accuracy per photo condition, for digits and numbers; a small digit on a 12 MP photo;
    and the latency of one image from its file."""
    with tempfile.TemporaryDirectory() as folder:
        print(f"\nreading digits as people hand them in: the first {count} MNIST {split} digits "
              "rendered under each condition (photos.py), and as many numbers of 2-6 of them "
              "written apart, read from their files (a number whole: every digit right) by "
              f"{model_path} as load_model.py reads them")
        accuracy = photo_accuracy(model_path, data_dir, count, Path(folder), split)
        numbers = number_accuracy(model_path, data_dir, count, Path(folder), split)
        print(f"  {'condition':<14} {'digits':>7} {'numbers':>8}")
        for condition, share in accuracy.items():
            print(f"  {condition:<14} {share:7.1%} {numbers[condition]:8.1%}")
        small_count = max(1, count // 10)
        small = small_digit_accuracy(model_path, data_dir, small_count, Path(folder), split)
        print(f"a digit 40 pixels tall on a 12 MP photo ({small_count} digits): "
              f"{small['in the photo']:.1%}; the photo cropped to it: {small['cropped']:.1%}")
        refused = nondigit_refusals(model_path, data_dir, count, split)
        print(f"non-digits answered `no digit` ({count} of each kind, "
              f"{'validation' if split == 'val' else 'held-out'} fonts and seeds): "
              + ", ".join(f"{kind} {share:.1%}" for kind, share in refused.items()))
        latency = latency_benchmark(model_path, data_dir, calls, Path(folder))
    return {"count": count, "accuracy": accuracy, "numbers": numbers, "small_digit": small,
            "nondigits": refused, "latency": latency}


def latency_benchmark(model_path: Path, data_dir: Path, calls: int, folder: Path) -> dict:
    """The latency of one image from its file to its prediction, for files of several sizes."""
    digit = load_dataset(data_dir, train=False, download=False)[0][0].numpy()
    (folder / "mnist.png").write_bytes(photos.encode(*photos.render(digit, "mnist 28x28", 0)))
    small_photo, quality, _ = photos.small_digit_photo(digit, seed=0)
    small_photo.save(folder / "small-digit.jpg", quality=quality)
    files = {"12 MP phone JPEG": phone_jpeg(folder / "phone.jpg", data_dir),
             "12 MP, small digit": folder / "small-digit.jpg",
             "drawn PNG 240x320": PROJECT_DIR / "examples" / "seven.png",
             "MNIST PNG 28x28": folder / "mnist.png"}
    print(f"\none image from its file to its prediction ({calls} calls; median and p99 ms)")
    latency = {}
    for name, path in files.items():
        latency[name] = row = prediction_latency(model_path, path, calls)
        print(f"  {name:<18} {row['file_median_ms']:7.2f} {row['file_p99_ms']:7.2f}"
              f"   ({path.stat().st_size / 1e6:.2f} MB file)")
    return latency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0])
    add_data_dir(parser)
    # The baseline is torchvision's own pipeline for the IDX datasets; CIFAR-10's training speed
    # is profile_recipe.py's to measure.
    parser.add_argument("--dataset", choices=sorted(name for name, spec in DATASETS.items()
                                                    if spec.source is not None),
                        default="mnist", help="the images to train on (CIFAR-10's recipes are "
                        "timed by tools/profile_recipe.py)")
    parser.add_argument("--target", type=float, default=0.99,
                        help="test accuracy whose training time is measured "
                             "(for fashion-mnist, try 0.9)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a subset: checks that it runs")
    parser.add_argument("--out", type=writable_file,
                        help="JSON file of the results (default: bench.json, with --quick "
                             "runs/bench-quick.json; none with --photos)")
    parser.add_argument("--photos", action="store_true", help="only the photo benchmark: accuracy "
                        "on digits rendered as photos, and latency from the file")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help="only the time to --target test accuracy: the fast recipe, the "
                             "default one and pytorch/examples' MNIST recipe")
    parser.add_argument("--crowded", action="store_true",
                        help="only the scripts' times quiet and beside 1 and 3 busy processes "
                             "(started and stopped here), under the thread policy and libgomp's "
                             "defaults; with --quick, the trainings on a small subset")
    parser.add_argument("--count", type=positive_int, default=300,
                        help="digits (and numbers) per condition for --photos")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the MNIST digits --photos renders: test (reported), or validation "
                             "(for choosing the preprocessing)")
    parser.add_argument("--model", type=Path,
                        help=f"{MODEL_HELP}: the one whose photo accuracy and prediction "
                             "latency are measured")
    parser.add_argument("--image", type=Path, default=PROJECT_DIR / "examples" / "seven.png",
                        help="image file for the prediction latency")
    args = parser.parse_args(argv)
    args.model = args.model or default_model_path()
    return args


def main() -> None:
    args = parse_args()
    if args.photos:
        results = photo_benchmark(args.model, args.data_dir, args.count, calls=200,
                                  split=args.split)
        if args.out:
            write_json(args.out, results)
        return
    if args.crowded:
        write_json(args.out or PROJECT_DIR / "runs" / "crowded.json", bench_crowded(args))
        return
    args.out = results_path(args.out, args.quick)
    if args.time_to_accuracy:
        x_train, y_train, x_test, y_test = load_tensors(args.data_dir, args.dataset, {})
        write_json(args.out, bench_time_to_accuracy(x_train, y_train, x_test, y_test, args))
        return
    steps, repeats = (10, 1) if args.quick else (200, 3)
    threads = torch.get_num_threads()
    results = {"machine": {"processor": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count(), "torch_threads": threads,
                           "torch": str(torch.__version__)},
               "quick": args.quick, **run_metadata()}
    print(f"bench on {platform.machine()} with {os.cpu_count()} CPUs, {threads} torch threads, "
          f"torch {torch.__version__}{' (quick)' if args.quick else ''}")
    # Child process first: its peak memory must not include this process's.
    results["training_run"] = bench_training_run(args.data_dir, args.dataset, args.quick)
    x_train, y_train, x_test, y_test = load_tensors(args.data_dir, args.dataset, results)
    results["throughput"] = bench_throughput(x_train, y_train, args, steps, repeats)
    results.update(bench_scaling(x_train, y_train, steps, repeats, args.quick))
    results["formats"] = bench_formats(args, x_test, y_test)
    results["evaluation"], results["latency"] = results["formats"][0], results["formats"][0]
    if args.quick:  # the photo benchmark, run small so that it never rots
        results["photos"] = photo_benchmark(args.model, args.data_dir, count=3, calls=5)
    results["time_to_accuracy"] = bench_time_to_accuracy(x_train, y_train, x_test, y_test, args)
    write_json(args.out, results)
    print(f"\nwrote {args.out}")


def bench_crowded(args: argparse.Namespace) -> dict:
    """The crowded-machine table (crowded.py), with the machine it ran on."""
    with tempfile.TemporaryDirectory() as folder:
        commands = workloads(args.data_dir, args.model, Path(folder), args.quick)
        print(f"the scripts beside busy processes on {cpu_name()}, {len(usable_cpus())} usable "
              f"CPUs; load average before: {os.getloadavg()[0]:.2f}")
        rows = crowded_rows(commands)
    print_rows(rows)
    return {"machine": cpu_name(), "quick": args.quick, "rows": rows, **run_metadata()}


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def results_path(out: Path | None, quick: bool) -> Path:
    """Where the results go: --out, else bench.json for a full run, the committed figures; a
    quick run, which only checks that everything runs, must never overwrite them."""
    if out is not None:
        return out
    return (PROJECT_DIR / "runs" / "bench-quick.json" if quick
            else PROJECT_DIR / "tools" / "bench.json")


def bench_training_run(data_dir: Path, dataset: str, quick: bool) -> dict:
    """`python train.py` with its defaults, in a child process."""
    run = training_run(data_dir, dataset, quick)
    model = (f"model file {run['model_file_bytes']:,} bytes" if run["model_file_bytes"]
             else "no model file (dry run)")
    print(f"\n`{run['command']}`: {run['wall_seconds']:.1f}s wall, peak resident memory "
          f"{run['peak_rss_mib']:.0f} MiB, {model}")
    return run


def load_tensors(data_dir: Path, dataset: str, results: dict) -> tuple[Tensor, ...]:
    """The normalized training split (as train.py's default run has it) and test set."""
    started = time.perf_counter()
    images, labels = load_dataset(data_dir, train=True, download=False, dataset=dataset)
    test_images, test_labels = load_dataset(data_dir, train=False, download=False,
                                            dataset=dataset)
    indices = training_indices(len(images))
    normalization = DATASETS[dataset].normalization
    x_train, x_test = (normalize(x, **normalization) for x in (images[indices], test_images))
    results["data_load_seconds"] = time.perf_counter() - started
    print(f"data loaded and normalized in {results['data_load_seconds']:.2f}s "
          "(kept apart from training times)")
    return x_train, labels[indices], x_test, test_labels


def bench_throughput(x_train: Tensor, y_train: Tensor, args: argparse.Namespace, steps: int,
                     repeats: int) -> list[dict]:
    """Training images/s of the usual data path against train.py's, LeNet on both."""
    print(f"\ntraining throughput, images/s, LeNet (median of {repeats} runs of {steps} steps "
          "after warm-up; same model and AdamW in the first two columns, so their ratio is the "
          "data path's alone)")
    print(f"{'batch':>6} {'DataLoader+transforms':>22} {'tensors':>9} {'ratio':>6} "
          f"{'train.py':>9} {'ratio':>6} {'+bf16 autocast':>15}")
    rows = []
    for batch_size in (64, 256):
        # Each measurement is bound to this batch size (partial), not to the loop's variable.
        ours = partial(our_throughput, x_train, y_train, batch_size, steps)
        conventional = partial(conventional_throughput, args.data_dir, args.dataset, batch_size,
                               steps)
        row = {"batch_size": batch_size, "conventional": median_of(repeats, conventional),
               "tensors": median_of(repeats, ours),
               "shipped": median_of(repeats, partial(ours, shipped=True)),
               "shipped_bf16": median_of(repeats, partial(ours, shipped=True, amp=True))}
        row["data_path_ratio"] = row["tensors"] / row["conventional"]
        row["shipped_ratio"] = row["shipped"] / row["conventional"]
        rows.append(row)
        print(f"{batch_size:>6} {row['conventional']:>22,.0f} {row['tensors']:>9,.0f} "
              f"{row['data_path_ratio']:>5.1f}x {row['shipped']:>9,.0f} "
              f"{row['shipped_ratio']:>5.1f}x {row['shipped_bf16']:>15,.0f}")
    print("(train.py = tensors + channels_last + fused AdamW, its defaults)")
    return rows


def bench_scaling(x_train: Tensor, y_train: Tensor, steps: int, repeats: int,
                  quick: bool) -> dict:
    """train.py's loop at several batch sizes on 1 and 2 threads, against a matmul's rate."""
    flops = training_flops_per_image()
    print(f"\nepoch time of train.py's loop ({len(x_train):,} images, estimated from {steps}+ "
          f"steps), fp32; {flops / 1e6:.2f} MFLOP per training image")
    print(f"{'batch':>6} {'threads':>8} {'images/s':>10} {'epoch s':>8} {'GFLOP/s':>8}")
    threads, rows = torch.get_num_threads(), []
    for thread_count in (1, 2):
        torch.set_num_threads(thread_count)
        for batch_size in (64, 128, 256, 512, 1024):
            rate = median_of(repeats, partial(our_throughput, x_train, y_train, batch_size,
                                              max(2, steps * 64 // batch_size), shipped=True))
            row = {"batch_size": batch_size, "threads": thread_count, "images_per_second": rate,
                   "epoch_seconds": len(x_train) / rate, "gflops_per_second": rate * flops / 1e9}
            rows.append(row)
            print(f"{batch_size:>6} {thread_count:>8} {rate:>10,.0f} "
                  f"{row['epoch_seconds']:>8.2f} {row['gflops_per_second']:>8.1f}")
    torch.set_num_threads(threads)
    peak = matmul_gflops(1024 if quick else 2048)
    best = max(row["gflops_per_second"] for row in rows)
    print(f"for scale: a large float32 matmul reaches {peak:.0f} GFLOP/s on these {threads} "
          f"threads; the LeNet's best epoch above is {best / peak:.0%} of that")
    return {"scaling": rows, "training_flops_per_image": flops,
            "matmul_gflops_per_second": peak}


def bench_formats(args: argparse.Namespace, x_test: Tensor, y_test: Tensor) -> list[dict]:
    """The shipped model as PyTorch, ONNX and INT8 ONNX files: accuracy, speed, latency."""
    calls = 20 if args.quick else 500
    with tempfile.TemporaryDirectory() as folder:
        formats = export_formats(args.model, args.data_dir, Path(folder), args.quick)
        print(f"\ninference on the CPU: the {len(x_test):,} test images in batches of 1,000, "
              f"and one image ({calls} calls, median and p99; 'from file' adds decoding and "
              "preprocessing the PNG)")
        print(f"{'format':<13} {'file KB':>8} {'accuracy':>9} {'max |logit diff|':>17} "
              f"{'batch s':>8} {'images/s':>9} {'1 image ms':>11} {'p99 ms':>7} "
              f"{'from file ms':>13}")
        rows = []
        with torch.no_grad():
            reference = load_model(args.model)(x_test)
        for name, path in formats.items():
            model = load_model(path)
            row = {"format": name, "file_bytes": path.stat().st_size,
                   **inference_speed(model, x_test, y_test),
                   **prediction_latency(path, args.image, calls),
                   "max_logit_difference": max_difference(model, reference, x_test)}
            rows.append(row)
            print(f"{name:<13} {row['file_bytes'] / 1024:>8.0f} {row['accuracy']:>9.2%} "
                  f"{row['max_logit_difference']:>17.2e} {row['seconds']:>8.3f} "
                  f"{row['images_per_second']:>9,.0f} {row['model_median_ms']:>11.3f} "
                  f"{row['model_p99_ms']:>7.3f} {row['file_median_ms']:>13.3f}")
    return rows


def export_formats(model: Path, data_dir: Path, folder: Path, quick: bool) -> dict[str, Path]:
    """The model file, and its ONNX and INT8 ONNX exports in `folder` when the optional
    deployment packages are installed."""
    try:
        record = read_model_file(model)
        formats = {"PyTorch fp32": model, "ONNX fp32": folder / "model.onnx",
                   "ONNX INT8": folder / "model.int8.onnx"}
        export_onnx(record, formats["ONNX fp32"])
        calibration = calibration_images(record, data_dir, 100 if quick else 500)
        export_onnx(record, formats["ONNX INT8"], calibration)
        return formats
    except UserError as missing:
        print(f"\n(ONNX formats skipped: {missing})")
        return {"PyTorch fp32": model}


def bench_time_to_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                           args: argparse.Namespace) -> dict:
    """The training seconds each recipe takes to reach --target test accuracy, the test set
    scored after each epoch only to measure this: the fast recipe, the default one, and
    pytorch/examples' MNIST recipe (capped at 5 epochs, stopped once it gets there), in this
    one run on this machine."""
    subset = 2000 if args.quick else None
    fast = TrainConfig(**read_recipe(PROJECT_DIR / "configs" / "fast.json"))
    recipes = {"fast (configs/fast.json)": fast,
               "default (train.py)": TrainConfig(epochs=1 if args.quick else 8)}
    print(f"\ntime to {args.target:.1%} test accuracy (seconds of training; test scored after "
          "each epoch only to measure this)")
    results = {}
    for name, config in recipes.items():
        results[name] = time_to_accuracy(x_train[:subset], y_train[:subset], x_test, y_test,
                                         args.target, config)
        print_curve(name, results[name])
    curve = train_examples_recipe(args.data_dir, epochs=1 if args.quick else 5,
                                  train_size=subset and len(x_train[:subset]),
                                  stop_at=args.target)
    reached = next((row for row in curve if row["test_accuracy"] >= args.target), None)
    results["pytorch/examples"] = examples = {"target": args.target, "reached": reached,
                                              "curve": curve}
    print_curve("pytorch/examples mnist/main.py (DataLoader, batch 64, Adadelta)", examples)
    slowest = examples["reached"]["train_seconds"] if reached else None
    for name in recipes:
        mine = results[name]["reached"]
        if slowest and mine:
            print(f"  {name}: {slowest / mine['train_seconds']:.0f}x faster to "
                  f"{args.target:.1%} than pytorch/examples")
    return results


def print_curve(name: str, reach: dict) -> None:
    """A recipe's test accuracy after each epoch, and when it reached the target."""
    print(f"  {name}:")
    for point in reach["curve"]:
        print(f"    epoch {point['epoch']}: {point['train_seconds']:6.1f}s of training, "
              f"test {point['test_accuracy']:.2%}")
    reached = reach["reached"]
    print(f"    -> reached at epoch {reached['epoch']} after {reached['train_seconds']:.1f}s"
          if reached else "    -> not reached")


if __name__ == "__main__":
    run_cli(main)
