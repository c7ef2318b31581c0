"""The datasets: what each one is, reading and checking its files, the validation split, and
normalization. CIFAR-10's binary files are read in cifar10.py.

A split is held as one uint8 tensor of images and one of labels; training takes batches by
indexing a shuffled permutation of them (no Dataset objects, no per-sample transforms).
"""

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from torch import Tensor

from lenetkit.cifar10 import CIFAR10_CLASSES, CIFAR10_FOLDER, load_cifar10
from lenetkit.environment import require
from lenetkit.errors import UserError
from lenetkit.inputs import read_input_bytes
from lenetkit.outputs import write_atomic


@dataclass(frozen=True)
class DatasetInfo:
    """What the code knows of a dataset: where its files come from, its classes, its image shape,
    its pixel statistics and the augmentation that suits it."""
    name: str
    folder: str  # under the data root: torchvision's MNIST/raw/, or cifar-10-batches-bin/
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # an image's (channels, height, width)
    mean: tuple[float, ...]  # of the training pixels scaled to [0, 1], one per channel
    std: tuple[float, ...]
    augmentation: str  # what --augment applies when no list is given: see augmentation.py
    arch: str  # the network train.py builds when none is named (model.py)
    # the name of torchvision's class for an IDX dataset, which downloads it: see idx_source
    source: str | None = None

    @property
    def normalization(self) -> dict[str, float | list[float]]:
        """normalize()'s keyword arguments, as model files store them: one number each for a gray
        dataset (as files have always held them, so that older copies of this code read them)."""
        if len(self.mean) == 1:
            return {"mean": self.mean[0], "std": self.std[0]}
        return {"mean": list(self.mean), "std": list(self.std)}


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")  # torchvision's names, in label order


def idx_source(spec: DatasetInfo) -> type:
    """torchvision's class for an IDX dataset of DATASETS, which downloads its files. Imported
    only then: importing torchvision imports all of its models, which would slow the start of
    every script, predicting included."""
    assert spec.source is not None, f"{spec.name} is not an IDX dataset"
    return getattr(require("torchvision.datasets", "requirements.txt"), spec.source)


# Means and standard deviations of the 60,000 training images' pixels (tests check them on the
# real files).
# CIFAR-10's are those of its 50,000 (SOURCE.md beside the shared copy checks them).
DATASETS = {
    "mnist": DatasetInfo("mnist", "MNIST", tuple(str(digit) for digit in range(10)), (1, 28, 28),
                         (0.1307,), (0.3081,), "affine", "lenet", "MNIST"),
    "fashion-mnist": DatasetInfo("fashion-mnist", "FashionMNIST", FASHION_CLASSES, (1, 28, 28),
                                 (0.2860,), (0.3530,), "flip,erase", "lenet", "FashionMNIST"),
    "cifar10": DatasetInfo("cifar10", CIFAR10_FOLDER, CIFAR10_CLASSES, (3, 32, 32),
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "shift,flip",
                           "cifarnet"),
}
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
# The published MD5s of the original .gz files (the datasets' pages; torchvision's lists hold the
# same, and a test compares them): a damaged download is caught before it is unpacked.
IDX_MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
}
# The uncompressed files' sizes (the same in both datasets): the IDX header, then 60,000 training
# or 10,000 test images of 28 x 28 bytes, or one byte a label.
IDX_SIZES = {"train-images-idx3-ubyte": 16 + 60_000 * 784, "train-labels-idx1-ubyte": 8 + 60_000,
             "t10k-images-idx3-ubyte": 16 + 10_000 * 784, "t10k-labels-idx1-ubyte": 8 + 10_000}
# The validation split is fixed (not tied to --seed) so that every run, whatever
# its seed, is judged on the same 5,000 images.
SPLIT_SEED = 0
DEFAULT_VAL_SIZE = 5000


def idx_files(train: bool) -> tuple[str, str]:
    """The uncompressed (images, labels) file names of one split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def load_dataset(data_dir: str | Path, train: bool, download: bool = True,
                 dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """The uint8 images (N, 28, 28) and int64 labels (N,) of one split of a dataset of DATASETS;
    CIFAR-10's images are (N, 3, 32, 32) (cifar10.py).

    Reads torchvision's layout, `data_dir/MNIST/raw/` (or `FashionMNIST/raw/`): the uncompressed
    IDX files, or the original `.gz` files there (see _idx_bytes). When files are missing and
    `download` is set, torchvision fetches them; when that fails (offline), the error names the
    files and the folder to put them in.
    """
    spec = DATASETS[dataset]
    if spec.source is None:
        return load_cifar10(data_dir, train, download)
    raw_dir = Path(data_dir) / spec.folder / "raw"
    names = idx_files(train)
    # Anything by the name is there: a folder or a pipe in its place is refused as such, later.
    present = lambda: all(os.path.lexists(raw_dir / name) or os.path.lexists(raw_dir / f"{name}.gz")
                          for name in names)
    if download and not present():
        source = idx_source(spec)  # outside the try: a torchvision missing is not "offline"
        try:
            source(str(data_dir), train=train, download=True)
        except Exception:  # RuntimeError, URLError or OSError from torchvision: "not here"
            pass
    if not present():
        missing = [name for name in names if not os.path.lexists(raw_dir / name)]
        wanted = ", ".join(IDX_MD5[dataset])
        raise UserError(f"{spec.folder} files missing in {raw_dir} ({', '.join(missing)}); "
                        f"put the four files {wanted} there (gzipped or not), "
                        f"or run once with a network connection to download them")
    image_file, label_file = raw_dir / names[0], raw_dir / names[1]
    images = _parse_idx(_idx_bytes(image_file, dataset), image_file, dimensions=3)
    labels = _parse_idx(_idx_bytes(label_file, dataset), label_file, dimensions=1).long()
    if images.shape[1:] != spec.shape[1:] or len(images) != len(labels):
        raise UserError(f"{spec.folder} files in {raw_dir} disagree: {tuple(images.shape)} images "
                        f"but {len(labels)} labels; expected N x {spec.shape[1]} x {spec.shape[2]} "
                        "images and N labels")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(spec.classes):
        raise UserError(f"{raw_dir / names[1]} holds labels outside 0..{len(spec.classes) - 1}: "
                        "the file is corrupt")
    return images, labels


def _idx_bytes(path: Path, dataset: str) -> bytes:
    """The content of one IDX file of `dataset`: the uncompressed file at `path` (checked against
    the real one's SHA-256 when it claims to be it, see _check_real), else its `.gz`, checked
    against its published MD5 and decompressed, then kept beside it for next time when the folder
    can be written (each process writes its own temporary file, so parallel runs don't collide);
    in a read-only folder the bytes in memory serve. No file is read beyond the real file's
    size: one in its place is never larger (nor is its .gz, but for gzip's own few bytes)."""
    compressed = path.with_name(f"{path.name}.gz")
    limit, what = IDX_SIZES[path.name], f"{dataset}'s {path.name}"
    # gzip stores what it can't shrink, adding a header, a trailer and 5 bytes per 64 KiB block
    packed = (read_input_bytes(compressed, limit + limit // 8192 + 1024, f"{what}.gz")
              if os.path.lexists(compressed) else None)
    if packed is not None:
        _check_md5(compressed, packed, dataset)
    if os.path.lexists(path):
        data = read_input_bytes(path, limit, what)
        _check_real(path, data, dataset, beside_gz=packed is not None)
        return data
    assert packed is not None, "load_dataset found the file or its .gz"
    data = _gunzip(compressed, packed)
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


def _check_md5(path: Path, packed: bytes, dataset: str) -> None:
    """An original .gz file of `dataset` (its bytes, `packed`) must have its published MD5
    (IDX_MD5)."""
    expected = IDX_MD5[dataset][path.name]
    if hashlib.md5(packed).hexdigest() != expected:
        raise UserError(f"{path} is corrupt: its MD5 is not the published {expected}; "
                        "delete it and fetch it again")


def _gunzip(source: Path, packed: bytes) -> bytes:
    """The bytes of a .gz file (its MD5 checked: it unpacks to the real file) decompressed."""
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{source} is truncated or corrupt ({error}); "
                        "delete it and fetch it again") from None


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


# Normalization constants: one number for all channels, or one a channel (as a list, or a tensor).
PerChannel: TypeAlias = float | Sequence[float] | Tensor


def normalize(images: Tensor, mean: PerChannel, std: PerChannel) -> Tensor:
    """uint8 images, gray (N, H, W) or colour (N, C, H, W), to float32 (N, C, H, W) standardized
    with the training set's statistics of each channel (a dataset's, or a model file's
    `normalization`)."""
    # In place on the float copy: one copy of the dataset at a time.
    return standardize(images.float().div_(255), mean, std, in_place=True)


def standardize(pixels: Tensor, mean: PerChannel, std: PerChannel,
                in_place: bool = False) -> Tensor:
    """Float images in [0, 1], gray (N, H, W) or (N, C, H, W), standardized as (N, C, H, W): in a
    new tensor, or with `in_place` in `pixels` itself."""
    pixels = pixels.unsqueeze(1) if pixels.dim() == 3 else pixels
    means, stds = per_channel(mean, pixels), per_channel(std, pixels)
    return pixels.sub_(means).div_(stds) if in_place else (pixels - means) / stds


def per_channel(values: PerChannel, like: Tensor) -> Tensor:
    """One value for all channels, or one a channel, as (C, 1, 1) to broadcast over images."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def black(spec: DatasetInfo) -> Tensor:
    """A black pixel's value in each channel after normalization (C, 1, 1): what distortions pad
    with."""
    return standardize(torch.zeros(1, len(spec.mean), 1, 1), spec.mean, spec.std)[0]


def split_indices(n: int, val_size: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """A seeded random split of range(n) into (train, validation) indices; a `val_size` of 0
    holds nothing out."""
    if not 0 <= val_size < n:
        raise UserError(f"validation size must be between 0 and {n - 1} for {n} training images, "
                        f"got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def training_indices(n: int) -> Tensor:
    """The images a run with the default validation split trains on, of `n` training images (a
    tenth of them is held out instead when `n` is too small for DEFAULT_VAL_SIZE, as in the
    tests' tiny files)."""
    return split_indices(n, min(DEFAULT_VAL_SIZE, n // 10))[0]
