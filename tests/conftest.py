"""Shared fixtures: tiny MNIST-format and CIFAR-10-format datasets written by the tests, the real
datasets when present, and a helper that runs the scripts as a user would."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tools"))  # the benchmarks' renderers of digits and photos

REAL_DATA_DIR = PROJECT_DIR / "data"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REAL_MNIST_PRESENT = all((REAL_DATA_DIR / "MNIST" / "raw" / name).is_file() for name in IDX_FILES)
needs_real_mnist = pytest.mark.skipif(not REAL_MNIST_PRESENT, reason=f"the real MNIST is not in "
                                     f"{REAL_DATA_DIR}/MNIST/raw (link ../shared/data/MNIST there)")
REAL_FASHION_PRESENT = all((REAL_DATA_DIR / "FashionMNIST" / "raw" / name).is_file() for name in IDX_FILES)
needs_real_fashion = pytest.mark.skipif(not REAL_FASHION_PRESENT, reason=f"the real Fashion-MNIST is not in "
                                        f"{REAL_DATA_DIR}/FashionMNIST/raw (link ../shared/data/FashionMNIST there)")

CIFAR10_FILES = (*(f"data_batch_{n}.bin" for n in range(1, 6)), "test_batch.bin")
REAL_CIFAR10_DIR = REAL_DATA_DIR / "cifar-10-batches-bin"
REAL_CIFAR10_PRESENT = all((REAL_CIFAR10_DIR / name).is_file() for name in CIFAR10_FILES)
needs_real_cifar10 = pytest.mark.skipif(
    not REAL_CIFAR10_PRESENT, reason=f"the real CIFAR-10 is not in {REAL_CIFAR10_DIR} (rebuild it "
    "with ../shared/data/CIFAR10/get.py, see its SOURCE.md)")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST's: big-endian header (magic 0x0000080N for uint8, N dimensions), then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-ins for digits: class k is a bright bar at row 2 + 2k, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 60, (count, 28, 28))
    for image, label in zip(images, labels):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: Path, train_count: int = 600, test_count: int = 200, folder: str = "MNIST") -> Path:
    """A tiny dataset in torchvision's layout, root/MNIST/raw/ (or root/`folder`/raw/); returns root."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_cifar10(root: Path, per_file: int = 120) -> Path:
    """A tiny CIFAR-10 in its binary layout, root/cifar-10-batches-bin/ (`per_file` records in each
    of the six files), of learnable stand-ins: class k is noise with a bright square in one of
    ten places, coloured by the class; returns root."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        labels = rng.integers(0, 10, per_file)
        images = rng.integers(0, 80, (per_file, 3, 32, 32))
        for image, label in zip(images, labels):
            top, left = 4 + 12 * (label // 5), 2 + 6 * (label % 5)
            image[label % 3, top:top + 10, left:left + 6] = 255
        records = np.concatenate([labels[:, None], images.reshape(per_file, -1)], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("tiny_data"))


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs one of the project's scripts in a subprocess, as from a shell, on the CPU."""
    result = subprocess.run([sys.executable, str(PROJECT_DIR / script), *map(str, args)],
                            capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                                 "PYTHONPATH": str(PROJECT_DIR)})  # tools/ import the package
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


TINY_TRAINING = ("--val-size", "100", "--batch-size", "50", "--no-download")


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A model file trained for two epochs on the tiny dataset."""
    out = tmp_path_factory.mktemp("tiny_model") / "model.pth"
    run_script("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "2", *TINY_TRAINING)
    return out


def ctrl_c_in_epoch(monkeypatch, epoch: int) -> None:
    """Makes train.py's training loop raise KeyboardInterrupt as epoch `epoch` starts (a Ctrl-C)."""
    import lenetkit.training

    real_train_epoch, epochs_started = lenetkit.training.train_epoch, []

    def interrupted(*args, **kwargs):
        epochs_started.append(1)
        if len(epochs_started) == epoch:
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(lenetkit.training, "train_epoch", interrupted)
