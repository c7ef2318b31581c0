"""The measurements bench.py makes and prints: training throughput, inference speed and latency,
time to accuracy, reading photos, a training run's memory, and the machine's arithmetic, each
returned as plain numbers."""

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from lenetkit.config import TrainConfig
from lenetkit.datasets import DATASETS, DEFAULT_VAL_SIZE, idx_source, load_dataset, split_indices
from lenetkit.environment import PROJECT_DIR
from lenetkit.evaluation import evaluate
from lenetkit.model import Classifier, build_model
from lenetkit.negatives import KINDS, has_garments, negative_images
from lenetkit.prediction import Predictor, predict_images
from lenetkit.preprocess import ImageError
from lenetkit.training import setup_training, train_epoch

import photos


def conventional_throughput(data_dir: Path, dataset: str, batch_size: int, steps: int,
                            seed: int = 0) -> float:
    """Training images/s of the PyTorch MNIST example's data path: a torchvision Dataset with
    ToTensor + Normalize per sample, through a DataLoader (its CPU default: no worker processes)."""
    torch.manual_seed(seed)
    spec = DATASETS[dataset]
    per_sample = transforms.Compose([transforms.ToTensor(),
                                     transforms.Normalize((spec.mean,), (spec.std,))])
    images = idx_source(spec)(str(data_dir), train=True, download=False, transform=per_sample)
    loader = DataLoader(images, batch_size=batch_size, shuffle=True)
    model = build_model("lenet")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = iter(loader)
    started, seen = None, 0
    for step in range(steps + 2):
        if step == 2:  # the first steps warm up the allocator and kernels
            started, seen = time.perf_counter(), 0
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - started)


def our_throughput(images: Tensor, labels: Tensor, batch_size: int, steps: int,
                   shipped: bool = False,
                   amp: bool = False, seed: int = 0) -> float:
    """Training images/s of train.py's loop: the dataset as one tensor, batches by indexing a
    permutation.
    `shipped` adds what train.py does beyond the data path: channels_last and the fused AdamW."""
    config = TrainConfig(batch_size=batch_size, lr=1e-3, schedule="constant", amp=amp,
                               seed=seed)
    training = setup_training(config, steps, images.device, channels_last=shipped)
    if shipped:
        images = images.contiguous(memory_format=torch.channels_last)
    else:  # the optimizer of the usual example: one kernel a parameter
        training.optimizer = torch.optim.AdamW(training.model.parameters(), lr=config.lr)
        training.scheduler = torch.optim.lr_scheduler.LambdaLR(training.optimizer, lambda _: 1.0)
    warm_up = 2 * batch_size
    train_epoch(training, images[:warm_up], labels[:warm_up], config)
    subset = images[:steps * batch_size], labels[:steps * batch_size]
    started = time.perf_counter()
    train_epoch(training, *subset, config)
    return len(subset[0]) / (time.perf_counter() - started)


def inference_speed(model: Classifier, images: Tensor, labels: Tensor) -> dict:
    """Accuracy and seconds of evaluate() on all `images`, after a warm-up."""
    evaluate(model, images[:1000], labels[:1000])
    started = time.perf_counter()
    accuracy = evaluate(model, images, labels).accuracy
    seconds = time.perf_counter() - started
    return {"images": len(images), "accuracy": accuracy, "seconds": seconds,
            "images_per_second": len(images) / seconds}


@torch.no_grad()
def max_difference(model: Classifier, reference: Tensor, images: Tensor) -> float:
    """The largest absolute difference between `model`'s logits and `reference` on `images`."""
    return (model(images) - reference).abs().max().item()


def time_to_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                     target: float, config: TrainConfig) -> dict:
    """Trains `config` as train.py does, scoring the test set after each epoch (a measurement,
    not a choice), and reports the training seconds until test accuracy first reaches `target`."""
    x_train = x_train.contiguous(memory_format=torch.channels_last)
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    training = setup_training(config, steps_per_epoch, x_train.device)
    seconds, curve, reached = 0.0, [], None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        train_epoch(training, x_train, y_train, config)
        seconds += time.perf_counter() - started
        accuracy = evaluate(training.model, x_test, y_test).accuracy
        curve.append({"epoch": epoch, "train_seconds": seconds, "test_accuracy": accuracy})
        if reached is None and accuracy >= target:
            reached = curve[-1]
    return {"target": target, "reached": reached, "curve": curve, "recipe": asdict(config)}


def prediction_latency(model_path: Path, image_path: Path, calls: int) -> dict:
    """Milliseconds for one image: the model alone on its prepared input, and the whole path from
    the file as load_model.py takes it (decoding, preprocessing, predicting)."""
    predictor = Predictor(model_path)
    digit = predictor.inputs(image_path)

    def timings(predict) -> list[float]:
        predict()
        result = []
        for _ in range(calls):
            started = time.perf_counter()
            predict()
            result.append(1000 * (time.perf_counter() - started))
        return result

    model_only = timings(lambda: predict_images(predictor.model, predictor.record, digit))
    from_file = timings(lambda: predictor.read_number(image_path))
    percentile = lambda values, q: statistics.quantiles(values, n=100)[q - 1]
    return {"calls": calls,
            "model_median_ms": statistics.median(model_only),
            "model_p99_ms": percentile(model_only, 99),
            "file_median_ms": statistics.median(from_file),
            "file_p99_ms": percentile(from_file, 99)}


# Blank photographed pages' seeds: apart from the digits' photos' (their index), one range
# for choosing, one for reporting.
BLANK_PAGE_SEEDS = {"val": 0, "bench": 10_000}


def mnist_split(data_dir: Path, split: str) -> tuple[Tensor, Tensor]:
    """MNIST's validation digits (for "val": chosen on) or test digits (otherwise: reported
    only), uint8, and their labels."""
    images, labels = load_dataset(data_dir, train=split == "val", download=False)
    if split == "val":
        val = split_indices(len(images), DEFAULT_VAL_SIZE)[1]
        images, labels = images[val], labels[val]
    return images, labels


def photo_accuracy(model_path: Path, data_dir: Path, count: int, folder: Path,
                   split: str = "test") -> dict[str, float]:
    """The share of the split's first `count` digits read right under each of photos.CONDITIONS
    (read_accuracy)."""
    images, labels = mnist_split(data_dir, split)
    return read_accuracy(model_path, [(images[index], labels[index:index + 1])
                                      for index in range(count)], folder)


def number_accuracy(model_path: Path, data_dir: Path, count: int, folder: Path,
                    split: str = "test") -> dict[str, float]:
    """The share of `count` numbers of 2 to 6 digits (the lengths in turn) read whole under each
    of photos.CONDITIONS (read_accuracy), each number's digits drawn at random (seeded) from the
    split's and written apart."""
    images, labels = mnist_split(data_dir, split)
    rng = np.random.default_rng(0)
    picks = [torch.from_numpy(rng.choice(len(images), 2 + index % 5, replace=False))
             for index in range(count)]
    return read_accuracy(model_path, [(images[pick], labels[pick]) for pick in picks], folder)


def small_digit_accuracy(model_path: Path, data_dir: Path, count: int, folder: Path,
                         split: str = "test") -> dict[str, float]:
    """The share of the split's first `count` digits read right when written 40 pixels tall on
    a 12 MP phone photo of a page (photos.small_digit_photo), and when the photo is cropped to
    the digit's surroundings, each read from its JPEG file as load_model.py reads it."""
    predictor = Predictor(model_path)
    images, labels = mnist_split(data_dir, split)
    right = {"in the photo": 0, "cropped": 0}
    for index in range(count):
        image, quality, around = photos.small_digit_photo(images[index].numpy(), seed=index)
        for name, shown in (("in the photo", image), ("cropped", image.crop(around))):
            shown.save(folder / "small.jpg", quality=quality)
            right[name] += read_right(predictor, folder / "small.jpg", str(int(labels[index])))
    return {name: share / count for name, share in right.items()}


def read_right(predictor: Predictor, path: Path, text: str) -> bool:
    """Whether the image file at `path` reads as the number `text`, every digit read as one (a
    digit that the model's digit score refuses is not read); a file that raises ImageError is
    not read right."""
    try:
        number = predictor.read_number(path)
    except ImageError:
        return False
    return number.is_digit and number.text == text


def nondigit_refusals(model_path: Path, data_dir: Path, count: int,
                      split: str = "test") -> dict[str, float]:
    """The share of each kind of non-digit answered "no digit" (refused by the preprocessing, or
    by the model's digit score when it has one), read as load_model.py reads an image: `count`
    of each kind from negatives.py's held-out fonts and seeds (for test) or validation ones, and
    blank photographed pages under each of photos.PHOTO_CONDITIONS; and their mean."""
    predictor = Predictor(model_path)
    held_out = "val" if split == "val" else "bench"
    pages = max(1, count // len(photos.PHOTO_CONDITIONS))
    kinds = {"blank pages": photos.blank_pages(pages, BLANK_PAGE_SEEDS[held_out])}
    for kind in KINDS if has_garments(data_dir) else KINDS[:-1]:
        kinds[kind] = negative_images(kind, held_out, count, data_dir)
    refused = {}
    for kind, images in kinds.items():
        answered = 0
        for image in images:
            try:
                answered += not predictor.read_number(image).is_digit
            except ImageError:
                answered += 1
        refused[kind] = answered / len(images)
    refused["mean"] = sum(refused.values()) / len(refused)
    return refused


def read_accuracy(model_path: Path, items: list[tuple[Tensor, Tensor]],
                  folder: Path) -> dict[str, float]:
    """The share of `items` (a digit, 28 x 28, or a number's digits, n x 28 x 28, uint8; and
    their labels) read whole under each of photos.CONDITIONS: each rendered (seeded by its index)
    into an image file, then read from the file as load_model.py reads it (a digit read as a
    number of several is wrong; read_right)."""
    predictor = Predictor(model_path)
    accuracy = {}
    for condition in photos.CONDITIONS:
        right = 0
        for index, (digits, labels) in enumerate(items):
            image, quality = photos.render(digits.numpy(), condition, seed=index)
            path = folder / f"{index}.{'png' if quality is None else 'jpg'}"
            path.write_bytes(photos.encode(image, quality))
            right += read_right(predictor, path, "".join(map(str, labels.tolist())))
        accuracy[condition] = right / len(items)
    return accuracy


def phone_jpeg(path: Path, data_dir: Path, size: tuple[int, int] = (4000, 3000)) -> Path:
    """A 12-megapixel phone photo of a test digit, with sensor noise at full size (so that the
    JPEG holds as much detail as a camera's does), saved at quality 90."""
    images, _ = load_dataset(data_dir, train=False, download=False)
    image, _ = photos.render(images[0].numpy(), "phone photo", seed=0)
    pixels = np.asarray(image.resize(size, Image.Resampling.BICUBIC), np.float32)
    noisy = pixels + np.random.default_rng(0).normal(0, 4, pixels.shape).astype(np.float32)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path



def training_run(data_dir: Path, dataset: str, quick: bool) -> dict:
    """A default `python train.py` in a child process: wall time, peak resident memory, model
    file size."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "mnist_model.pth"
        command = [sys.executable, str(PROJECT_DIR / "train.py"), "--data-dir", str(data_dir),
                   "--dataset", dataset, "--out", str(out), "--no-download",
                   *(["--dry-run", "--val-size", "100"] if quick else [])]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        size = out.stat().st_size if out.exists() else None
    return {"command": " ".join(["train.py", *command[2:]]), "wall_seconds": wall,
            "peak_rss_mib": peak_kib / 1024, "model_file_bytes": size}


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    """The median of several measurements: one slow moment on a shared machine moves it little."""
    return statistics.median(measure() for _ in range(repeats))


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """What this machine's float32 arithmetic reaches on the friendliest work there is: a large
    matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return median_of(repeats, lambda: 2 * size ** 3 / 1e9 / _seconds(lambda: a @ b))


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def training_flops_per_image(batch_size: int = 64) -> float:
    """Floating-point operations (multiply-adds count 2) of one training step, forward and
    backward, per image."""
    model = build_model("lenet")
    images, labels = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / batch_size
