"""Shared fixtures: tiny MNIST-format and CIFAR-10-format datasets written by the tests, the real
datasets when present, and a helper that runs the scripts as a user would."""

import contextlib
import importlib
import io
import os
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tools"))  # the benchmarks' renderers of digits and photos

from lenetkit.threads import prepare_process  # noqa: E402 -- the suite is an entry point too:

prepare_process()  # its threads wait as the scripts' do, here and in those it starts

import torch  # noqa: E402 -- after the policy's wait is set

# The scripts the tests run compute on one thread count, whatever else the machine is doing, so
# that the runs a test compares (a resumed run and an uninterrupted one) agree bit for bit.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

REAL_DATA_DIR = PROJECT_DIR / "data"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
REAL_MNIST_PRESENT = all((REAL_DATA_DIR / "MNIST" / "raw" / name).is_file() for name in IDX_FILES)
needs_real_mnist = pytest.mark.skipif(not REAL_MNIST_PRESENT, reason=f"the real MNIST is not in "
                                     f"{REAL_DATA_DIR}/MNIST/raw (link ../shared/data/MNIST there)")
REAL_FASHION_PRESENT = all((REAL_DATA_DIR / "FashionMNIST" / "raw" / name).is_file()
                           for name in IDX_FILES)
needs_real_fashion = pytest.mark.skipif(
    not REAL_FASHION_PRESENT, reason=f"the real Fashion-MNIST is not in {REAL_DATA_DIR}/"
    "FashionMNIST/raw (link ../shared/data/FashionMNIST there)")

CIFAR10_FILES = (*(f"data_batch_{n}.bin" for n in range(1, 6)), "test_batch.bin")
REAL_CIFAR10_DIR = REAL_DATA_DIR / "cifar-10-batches-bin"
REAL_CIFAR10_PRESENT = all((REAL_CIFAR10_DIR / name).is_file() for name in CIFAR10_FILES)
needs_real_cifar10 = pytest.mark.skipif(
    not REAL_CIFAR10_PRESENT, reason=f"the real CIFAR-10 is not in {REAL_CIFAR10_DIR} (rebuild it "
    "with ../shared/data/CIFAR10/get.py, see its SOURCE.md)")


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of two prepared inputs' ink (pixels over 0.5) within a pixel of the other's."""
    a, b = (a > 0.5).float()[None], (b > 0.5).float()[None]
    near_a, near_b = (torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1) for x in (a, b))
    return ((a * near_b).sum() + (b * near_a).sum()).item() / (a.sum() + b.sum()).item()


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST's: big-endian header (magic 0x0000080N for uint8, N dimensions), then
    the bytes."""
    header = (struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
              + struct.pack(f">{array.ndim}I", *array.shape))
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-ins for digits: class k is a bright bar at row 2 + 2k, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 60, (count, 28, 28))
    for image, label in zip(images, labels):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: Path, train_count: int = 600, test_count: int = 200,
                folder: str = "MNIST") -> Path:
    """A tiny dataset in torchvision's layout, root/MNIST/raw/ (or root/`folder`/raw/); returns
    root."""
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
    """Runs one of the project's scripts in a subprocess, as from a shell, on the CPU: for the
    tests of the process itself (that it starts, its exit status, its signals); run_main runs
    the rest in this process."""
    return finished(start_script(script, *args), check)


def start_script(script: str, *args: str) -> subprocess.Popen:
    """One of the scripts started as run_script runs it; `finished` waits for it. Starting a
    Python that imports torch takes seconds, mostly of one core: the other can work meanwhile."""
    return subprocess.Popen([sys.executable, str(PROJECT_DIR / script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                                 "PYTHONPATH": str(PROJECT_DIR)})  # tools/ import the package


def finished(process: subprocess.Popen, check: bool = True) -> subprocess.CompletedProcess:
    """What a started script printed and its exit status, once it has ended."""
    stdout, stderr = process.communicate()
    return checked(subprocess.CompletedProcess(process.args[1:], process.returncode, stdout,
                                               stderr), check)


def run_scripts(*commands: list, check: bool = True) -> list[subprocess.CompletedProcess]:
    """Runs several of the scripts at once (`commands`: each a script and its arguments), each as
    run_script does."""
    return [finished(process, check) for process in [start_script(*command)
                                                     for command in commands]]


def checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, result.args))} exited {result.returncode}:\n"
                             f"{result.stderr}")
    return result


# The warnings a fresh Python leaves unshown (outside __main__).
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_main(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs one of the project's scripts in this process, as run_script runs it in a child, without
    the second or more a child takes to import torch: the script's own main (the root script's, or
    the tool's in tools/) under run_cli, with the command line in sys.argv (so argparse's usage
    lines and the command recorded in the model file read as the shell's), on the CPU alone, and
    the warnings a fresh Python shows printed to stderr. Returns the exit status and what it
    printed, as a CompletedProcess; this process's signal handler, threads and random state are
    left as they were."""
    from lenetkit.cli import run_cli

    argv = [str(PROJECT_DIR / script), *map(str, args)]
    main = importlib.import_module(Path(script).stem).main
    stdout, stderr = io.StringIO(), io.StringIO()
    status: object = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", argv))
        stack.enter_context(kept_process_state())
        stack.enter_context(cuda_hidden())
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("default")
        stack.enter_context(contextlib.redirect_stdout(stdout))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        try:
            run_cli(main)
        except SystemExit as exit:
            status = exit.code
    if not isinstance(status, int | None):  # sys.exit("message"): printed, status 1
        stderr.write(f"{status}\n")
        status = 1
    for warning in caught:
        if not issubclass(warning.category, QUIET_WARNINGS):
            stderr.write(warnings.formatwarning(warning.message, warning.category,
                                                warning.filename, warning.lineno))
    result = subprocess.CompletedProcess(argv, status or 0, stdout.getvalue(), stderr.getvalue())
    return checked(result, check)


def cuda_hidden() -> contextlib.AbstractContextManager:
    """What CUDA_VISIBLE_DEVICES="" does for a child process: no GPU for `auto` to pick."""
    import torch

    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    import torch._dynamo  # noqa: F401  (it notes the real function as it is imported)

    return mock.patch.object(torch.cuda, "is_available", lambda: False)


@contextlib.contextmanager
def kept_process_state():
    """Restores what a script's main may change for the whole process: the SIGTERM handler
    (run_cli's), the number of threads (serve.py's), and torch's global random state."""
    import torch

    handler, threads, random_state = (signal.getsignal(signal.SIGTERM), torch.get_num_threads(),
                                      torch.random.get_rng_state())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(random_state)


TINY_TRAINING = ("--val-size", "100", "--batch-size", "50", "--no-download")


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A model file trained for two epochs on the tiny dataset."""
    out = tmp_path_factory.mktemp("tiny_model") / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "2", *TINY_TRAINING)
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
