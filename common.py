"""What every script shares: the datasets in memory, augmentation, the device, evaluation, CLI errors.

The whole dataset is held as one tensor on the device and batches are taken by
indexing a shuffled permutation: no Dataset objects, no per-sample transforms.
"""

import argparse
import gzip
import hashlib
import importlib
import math
import signal
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.datasets import MNIST, FashionMNIST

from errors import UserError
from outputs import check_output_file, write_atomic

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = PROJECT_DIR / "data"
DEFAULT_MODEL_PATH = PROJECT_DIR / "mnist_model.pth"  # what train.py writes; never committed
# The model shipped with the code: training never writes it, so a user's run can't change what a clone holds.
PRETRAINED_MODEL_PATH = PROJECT_DIR / "pretrained" / "mnist_model.pth"
DEVICE_HELP = "where the model runs: auto (cuda, then mps, then cpu), cuda, mps or cpu"
MODEL_DEFAULT = "(default: mnist_model.pth once you have trained one, else pretrained/mnist_model.pth)"
MODEL_HELP = f"model file {MODEL_DEFAULT}"


def default_model_path() -> Path:
    """The model a script uses when none is named: the one you trained, else the shipped one."""
    return DEFAULT_MODEL_PATH if DEFAULT_MODEL_PATH.is_file() else PRETRAINED_MODEL_PATH



@dataclass(frozen=True)
class Dataset:
    """A dataset in MNIST's format (28x28 grayscale IDX files, 60,000 training and 10,000 test images)."""
    name: str
    source: type[MNIST]  # torchvision's class: the folder name, the files with their MD5s, the download mirrors
    classes: tuple[str, ...]
    mean: float  # of the training pixels scaled to [0, 1]
    std: float
    augmentation: str  # what --augment applies when no list is given: see AUGMENTATIONS

    @property
    def folder(self) -> str:
        return self.source.__name__  # torchvision's layout: data_dir/MNIST/raw/, data_dir/FashionMNIST/raw/

    @property
    def normalization(self) -> dict[str, float]:
        """normalize()'s keyword arguments, as model files store them."""
        return {"mean": self.mean, "std": self.std}


# Means and standard deviations of the 60,000 training images' pixels (tests check them on the real files).
DATASETS = {
    "mnist": Dataset("mnist", MNIST, tuple(str(digit) for digit in range(10)), 0.1307, 0.3081, "affine"),
    "fashion-mnist": Dataset("fashion-mnist", FashionMNIST, tuple(FashionMNIST.classes), 0.2860, 0.3530,
                             "flip,erase"),
}
MNIST_MEAN, MNIST_STD = DATASETS["mnist"].mean, DATASETS["mnist"].std
# SHA-256 of the real uncompressed IDX files (what the published .gz files decompress to; see
# data/*/SOURCE.md). The .gz files' MD5s don't cover the uncompressed files, which are what is read.
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# Their sizes (the same in both datasets): the IDX header, then 60,000 training or 10,000 test
# images of 28 x 28 bytes, or one byte a label.
IDX_SIZES = {"train-images-idx3-ubyte": 16 + 60_000 * 784, "train-labels-idx1-ubyte": 8 + 60_000,
             "t10k-images-idx3-ubyte": 16 + 10_000 * 784, "t10k-labels-idx1-ubyte": 8 + 10_000}
INPUT_SHAPE = (1, 28, 28)
# The validation split is fixed (not tied to --seed) so that every run, whatever
# its seed, is judged on the same 5,000 images.
SPLIT_SEED = 0
DEFAULT_VAL_SIZE = 5000


def run_cli(main: Callable[[], None]) -> None:
    """Runs a script's main(): a UserError becomes `error: ...` on stderr and exit status 1;
    Ctrl-C or SIGTERM becomes `interrupted` (with what to do next, if main says) and status 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        print(f"interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a polite kill gets the same clean exit as Ctrl-C


def writable_file(text: str) -> Path:
    """An output path (argparse's type): outputs.check_output_file's verdict, before any work."""
    try:
        return check_output_file(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def require(module: str):
    """Imports a package of the optional deployment set, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this needs the {module.split('.')[0]} package: "
                        "pip install -r requirements-deploy.txt") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not where the help already says it, nor for options off by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, Path):
            default = default.relative_to(PROJECT_DIR) if default.is_relative_to(PROJECT_DIR) else default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def make_parser(description: str, **kwargs) -> argparse.ArgumentParser:
    """Every script's parser: defaults shown once, and no abbreviated flags (so that `--seed` can
    never be taken for another flag that starts the same)."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                   allow_abbrev=False, **kwargs)


def positive_int(text: str) -> int:
    return int_in_range(text, 1, None)


def int_in_range(text: str, low: int, high: int | None) -> int:
    """An integer from `low` to `high` (no upper bound when None), as argparse's type check."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low:,} to {high:,}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed torch accepts: 0 to 2**64 - 1."""
    return int_in_range(text, 0, 2**64 - 1)


def fraction(text: str) -> float:
    """A number from 0 up to, not including, 1."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def positive_float(text: str) -> float:
    return _finite_float(text, allow_zero=False)


def non_negative_float(text: str) -> float:
    return _finite_float(text, allow_zero=True)


def _finite_float(text: str, allow_zero: bool) -> float:
    wanted = "a number >= 0" if allow_zero else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(device for device, ok in available.items() if ok)
    if not available.get(name, False):
        raise UserError(f"device {name!r} is not available here; use one of: auto, "
                        + ", ".join(device for device, ok in available.items() if ok))
    return torch.device(name)


def idx_files(train: bool) -> tuple[str, str]:
    """The uncompressed (images, labels) file names of one split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def load_dataset(data_dir: str | Path, train: bool, download: bool = True,
                 dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """The uint8 images (N, 28, 28) and int64 labels (N,) of one split of a dataset of DATASETS.

    Reads torchvision's layout, `data_dir/MNIST/raw/` (or `FashionMNIST/raw/`): the uncompressed
    IDX files, or the original `.gz` files there (see _idx_bytes). When files are missing and
    `download` is set, torchvision fetches them; when that fails (offline), the error names the
    files and the folder to put them in.
    """
    spec = DATASETS[dataset]
    raw_dir = Path(data_dir) / spec.folder / "raw"
    names = idx_files(train)
    present = lambda: all((raw_dir / name).is_file() or (raw_dir / f"{name}.gz").is_file()
                          for name in names)
    if download and not present():
        try:
            spec.source(str(data_dir), train=train, download=True)
        except Exception:  # torchvision raises RuntimeError, URLError or OSError; all mean "not here"
            pass
    if not present():
        missing = [name for name in names if not (raw_dir / name).is_file()]
        wanted = ", ".join(f"{gz}" for gz, _ in spec.source.resources)
        raise UserError(f"{spec.folder} files missing in {raw_dir} ({', '.join(missing)}); "
                        f"put the four files {wanted} there (gzipped or not), "
                        f"or run once with a network connection to download them")
    image_file, label_file = raw_dir / names[0], raw_dir / names[1]
    images = _parse_idx(_idx_bytes(image_file, dataset), image_file, dimensions=3)
    labels = _parse_idx(_idx_bytes(label_file, dataset), label_file, dimensions=1).long()
    if images.shape[1:] != INPUT_SHAPE[1:] or len(images) != len(labels):
        raise UserError(f"{spec.folder} files in {raw_dir} disagree: {tuple(images.shape)} images "
                        f"but {len(labels)} labels; expected N x 28 x 28 images and N labels")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(spec.classes):
        raise UserError(f"{raw_dir / names[1]} holds labels outside 0..{len(spec.classes) - 1}: "
                        "the file is corrupt")
    return images, labels


def _idx_bytes(path: Path, dataset: str) -> bytes:
    """The content of one IDX file of `dataset`: the uncompressed file at `path` (checked against
    the real one's SHA-256 when it claims to be it, see _check_real), else its `.gz`, checked
    against its published MD5 and decompressed, then kept beside it for next time when the folder
    can be written (each process writes its own temporary file, so parallel runs don't collide);
    in a read-only folder the bytes in memory serve."""
    compressed = path.with_name(f"{path.name}.gz")
    if compressed.is_file():
        _check_md5(compressed, DATASETS[dataset])
    if path.is_file():
        data = path.read_bytes()
        _check_real(path, data, dataset, beside_gz=compressed.is_file())
        return data
    data = _gunzip(compressed)
    try:
        write_atomic(path, lambda file: file.write(data))
    except UserError:
        pass  # a read-only folder: decompressed again next time
    return data


def _check_real(path: Path, data: bytes, dataset: str, beside_gz: bool) -> None:
    """A file that claims to be the real dataset's, by a `.gz` beside it or by the real file's size,
    must be it: altered bytes would otherwise train and score without a word. Files of other sizes
    with no `.gz` (a dataset of one's own in MNIST's format; the tests' tiny ones) are read as they
    are: there is nothing to check them against."""
    if not beside_gz and len(data) != IDX_SIZES[path.name]:
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest == IDX_SHA256[dataset][path.name]:
        return
    others = [name for name, known in IDX_SHA256.items() if known[path.name] == digest]
    what = (f"it is {others[0]}'s file, not {dataset}'s" if others
            else "its SHA-256 is not the real file's")
    fix = "the .gz beside it rebuilds it" if beside_gz else "fetch it again"
    raise UserError(f"{path} is altered or corrupt ({what}); delete it and {fix}")


def _check_md5(path: Path, spec: Dataset) -> None:
    """The original .gz files have published MD5s (torchvision's resources lists): a damaged
    download is caught here."""
    expected = dict(spec.source.resources)[path.name]
    if hashlib.md5(path.read_bytes()).hexdigest() != expected:
        raise UserError(f"{path} is corrupt: its MD5 is not the published {expected}; "
                        "delete it and fetch it again")


def _gunzip(source: Path) -> bytes:
    try:
        return gzip.decompress(source.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{source} is truncated or corrupt ({error}); delete it and fetch it again") from None


def _parse_idx(data: bytes, path: Path, dimensions: int) -> Tensor:
    """The uint8 array in an IDX file's bytes: a header (two zero bytes, 0x08 for unsigned bytes,
    the number of dimensions, then each size as a big-endian uint32), then the values."""
    header = 4 + 4 * dimensions
    if len(data) < header or data[:4] != bytes([0, 0, 0x08, dimensions]):
        reason = f"not an IDX file of unsigned bytes in {dimensions} dimensions"
    else:
        shape = struct.unpack(f">{dimensions}I", data[4:header])
        if len(data) == header + math.prod(shape):
            values = bytearray(memoryview(data)[header:])  # writable: the tensor shares it
            if not values:  # frombuffer refuses an empty buffer
                return torch.zeros(shape, dtype=torch.uint8)
            return torch.frombuffer(values, dtype=torch.uint8).view(shape)
        reason = f"{len(data) - header:,} bytes of values for shape {shape}"
    raise UserError(f"{path} is truncated or corrupt ({reason}); delete it and fetch it again")


def normalize(images: Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> Tensor:
    """uint8 images (N, 28, 28) to float32 (N, 1, 28, 28), standardized with the training set's statistics."""
    return images.float().div_(255).sub_(mean).div_(std).unsqueeze(1)  # in place: one float copy at a time


def split_indices(n: int, val_size: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """A seeded random split of range(n) into (train, validation) indices."""
    if not 0 < val_size < n:
        raise UserError(f"validation size must be between 1 and {n - 1} for {n} training images, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def training_indices(n: int) -> Tensor:
    """The images a run with the default validation split trains on, of `n` training images (a tenth
    of them is held out instead when `n` is too small for DEFAULT_VAL_SIZE, as in the tests' tiny files)."""
    return split_indices(n, min(DEFAULT_VAL_SIZE, n // 10))[0]


def random_affine(images: Tensor, generator: torch.Generator, background: float, rotation: float = 10.0,
                  scale: float = 0.1, shear: float = 0.1, shift: float = 2.0) -> Tensor:
    """Each normalized image (N, 1, H, W) rotated by up to `rotation` degrees, scaled by up to
    1 +- `scale`, sheared by up to `shear` and shifted by up to `shift` pixels, all at random from
    `generator` (on the CPU, so runs are reproducible on any device), in one batched grid_sample;
    `background` is the value of a black pixel after normalization."""
    n, _, height, width = images.shape
    uniform = lambda bound: (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    angle, zoom, skew = uniform(math.radians(rotation)), 1 + uniform(scale), uniform(shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + skew, uniform(2 * shift / width)], 1),
                         torch.stack([sin, cos, uniform(2 * shift / height)], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    # grid_sample pads with zeros: shift so that the padding is the background (black paper), not grey.
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + background


def shifted_views(images: Tensor, shift: int = 1) -> list[Tensor]:
    """The images and their copies moved by `shift` pixels left, right, up and down (edges repeated):
    the views that test-time augmentation averages over."""
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    height, width = images.shape[-2:]
    offsets = [(shift, shift), (shift, 0), (shift, 2 * shift), (0, shift), (2 * shift, shift)]
    return [padded[..., top:top + height, left:left + width] for top, left in offsets]


def random_shift(images: Tensor, generator: torch.Generator, background: float, shift: int = 2) -> Tensor:
    """Each image (N, C, H, W) moved by a whole number of pixels, up to `shift` each way and
    independently in each direction, the uncovered edge filled with `background` (the padded random
    crop of the CIFAR and Fashion-MNIST literature). Whole pixels keep the strokes and textures sharp,
    which random_affine's interpolation blurs."""
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * shift + 1, (2, n, 1), generator=generator).to(images.device)
    padded = F.pad(images, (shift,) * 4, value=background)
    rows = (torch.arange(height, device=images.device) + offsets[0])[:, :, None]  # (N, H, 1)
    cols = (torch.arange(width, device=images.device) + offsets[1])[:, None, :]  # (N, 1, W)
    picked = padded[torch.arange(n, device=images.device)[:, None, None], :, rows, cols]  # (N, H, W, C)
    return picked.permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image (N, 1, H, W) mirrored left to right with probability 1/2."""
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)


def random_erase(images: Tensor, generator: torch.Generator, area: tuple[float, float] = (0.02, 0.33),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> Tensor:
    """Random erasing (Zhong et al., 2017, with torchvision's defaults): in half of the images
    (N, 1, H, W), a rectangle of `area` times the image and aspect ratio in `aspect` is set to 0,
    the mean pixel after normalization."""
    n, _, height, width = images.shape
    rand = lambda: torch.rand(n, generator=generator, dtype=torch.float64)
    size = (area[0] + rand() * (area[1] - area[0])) * height * width
    ratio = torch.exp(math.log(aspect[0]) + rand() * (math.log(aspect[1]) - math.log(aspect[0])))
    box_height = (size * ratio).sqrt().round().clamp(1, height)
    box_width = (size / ratio).sqrt().round().clamp(1, width)
    top = (rand() * (height - box_height + 1)).floor()
    left = (rand() * (width - box_width + 1)).floor()
    chosen = rand() < 0.5
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])  # (N, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])  # (N, W)
    erased = chosen[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]
    return images.masked_fill(erased.unsqueeze(1).to(images.device), 0.0)


AUGMENTATIONS = ("affine", "shift", "flip", "erase")


def augment(images: Tensor, augmentations: str, generator: torch.Generator, background: float) -> Tensor:
    """A training batch through the comma-separated `augmentations` ("affine", "shift", "flip",
    "erase"; "none" for none), in that order; their randomness comes from `generator`."""
    chosen = augmentations.split(",")
    if "affine" in chosen:
        images = random_affine(images, generator, background)
    if "shift" in chosen:
        images = random_shift(images, generator, background)
    if "flip" in chosen:
        images = random_flip(images, generator)
    if "erase" in chosen:
        images = random_erase(images, generator)
    return images


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float  # fraction correct, 0..1
    probabilities: Tensor  # (N, classes), on the CPU


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000,
             tta: bool = False, amp: bool = False) -> Evaluation:
    """Loss, accuracy and class probabilities of `model` on normalized images; leaves the model's mode as it was.
    With `tta`, the probabilities are the mean over the image and its four one-pixel shifts;
    with `amp`, the forward pass runs in bfloat16 autocast, as in training."""
    was_training = model.training
    model.eval()
    log_probabilities = []
    for start in range(0, len(images), batch_size):
        views = shifted_views(images[start:start + batch_size]) if tta else [images[start:start + batch_size]]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = [model(view) for view in views]
        per_view = torch.stack([view_logits.float().log_softmax(1) for view_logits in logits])
        log_probabilities.append(per_view.logsumexp(0) - math.log(len(views)))  # log of the mean probability
    model.train(was_training)
    log_probabilities = torch.cat(log_probabilities)
    loss = F.nll_loss(log_probabilities, labels).item()
    accuracy = (log_probabilities.argmax(1) == labels).float().mean().item()
    return Evaluation(loss, accuracy, log_probabilities.exp().cpu())
