"""CIFAR-10, read from its binary version (`cifar-10-binary.tar.gz`, unpacked to
`data_dir/cifar-10-batches-bin/`): no pickle is ever loaded, and the files are checked as
datasets.py checks MNIST's IDX files (the real ones by their SHA-256, any by their layout).

A split is one uint8 tensor of images (N, 3, 32, 32), channels red, green, blue, and one int64
tensor of labels (N,), as datasets.load_dataset holds MNIST's.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lenetkit.environment import require
from lenetkit.errors import UserError
from lenetkit.inputs import check_input_file, read_input_bytes

CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# The official download (the dataset's page gives the MD5; torchvision checks it). It unpacks
# to CIFAR10_FOLDER.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
IMAGE_SHAPE = (3, 32, 32)
# A record: one label byte, then the red, green and blue planes, each 32 x 32 bytes row by row.
RECORD_BYTES = 1 + 3 * 32 * 32
REAL_FILE_BYTES = 10_000 * RECORD_BYTES  # every real file holds 10,000 images, and no file more
FILE_KIND = "a CIFAR-10 batch file"
# SHA-256 of the real files (the SOURCE.md of the shared copy lists them). The tarball's MD5 covers
# only the download, not the files read.
CIFAR10_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


def cifar10_files(train: bool) -> tuple[str, ...]:
    """The file names of one split, in the order their images are concatenated."""
    if train:
        return tuple(f"data_batch_{number}.bin" for number in range(1, 6))
    return ("test_batch.bin",)


ALL_FILES = cifar10_files(train=True) + cifar10_files(train=False)


def load_cifar10(data_dir: str | Path, train: bool,
                 download: bool = True) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, 32, 32) (channels red, green, blue) and int64 labels (N,).

    Reads `data_dir/cifar-10-batches-bin/`: the training split is data_batch_1.bin to
    data_batch_5.bin in that order, the test split test_batch.bin. When files are missing and
    `download` is set, torchvision fetches and unpacks the official tarball; when that fails
    (offline), the error names the files and the folder to put them in. The sizes of all the
    files present, of both splits, are checked before any is read (_check_sizes).
    """
    folder = Path(data_dir) / CIFAR10_FOLDER
    names = cifar10_files(train)
    _ensure_present(Path(data_dir), names, download)
    _check_sizes(folder)
    records = [_read_records(folder / name) for name in names]
    # One copy each: concatenate makes fresh, contiguous, writable arrays out of the views.
    images = np.concatenate([part[:, 1:] for part in records]).reshape(-1, *IMAGE_SHAPE)
    labels = np.concatenate([part[:, 0] for part in records]).astype(np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _ensure_present(data_dir: Path, names: tuple[str, ...], download: bool) -> None:
    """Fetches the tarball when files are missing and `download` is set; a UserError naming the
    missing files and their folder when they are still missing (offline, or no `download`)."""
    folder = data_dir / CIFAR10_FOLDER
    # Anything by the name is there: a folder or a pipe in its place is refused as such, later.
    missing = lambda: [name for name in names if not os.path.lexists(folder / name)]
    if download and missing():
        # Imported only now (see datasets.idx_source), outside the try: a torchvision missing is
        # not "offline".
        utils = require("torchvision.datasets.utils", "requirements.txt")
        try:
            utils.download_and_extract_archive(CIFAR10_URL, download_root=data_dir,
                                               md5=CIFAR10_MD5)
        except Exception:  # URLError, OSError or RuntimeError from torchvision: "not here"
            pass
    if missing():
        raise UserError(f"CIFAR-10 files missing in {folder} ({', '.join(missing())}); put the "
                        f"files of {CIFAR10_URL.rsplit('/', 1)[1]} there, or run once with a "
                        "network connection to download them")


def _check_sizes(folder: Path) -> None:
    """Every file present in `folder`, of both splits, judged by its size before any is read: a
    regular file of whole records, no more than a real file's 10,000, and as many as the other
    files hold (the real ones 10,000 each; a dataset of one's own in CIFAR's format, or the tests'
    tiny ones, as many in each file). A file a record short, the test file included, would
    otherwise train or score without a word."""
    counts = {name: _record_count(folder / name, check_input_file(folder / name, REAL_FILE_BYTES,
                                                                  FILE_KIND))
              for name in ALL_FILES if os.path.lexists(folder / name)}
    tally = list(counts.values())
    usual = max(tally, key=lambda count: (tally.count(count), count))  # a tie: the larger
    for name, count in counts.items():
        if count != usual:
            raise UserError(f"{folder / name} is truncated or corrupt ({count:,} records, the "
                            f"other files {usual:,} each); delete it and fetch it again")


def _record_count(path: Path, size: int) -> int:
    """The number of records in a file of `size` bytes; a UserError unless they are whole."""
    if not size or size % RECORD_BYTES:
        raise UserError(f"{path} is truncated or corrupt ({size:,} bytes, not a whole "
                        f"number of {RECORD_BYTES:,}-byte records); delete it and fetch it again")
    return size // RECORD_BYTES


def _read_records(path: Path) -> np.ndarray:
    """The file's records as a read-only uint8 array (N, RECORD_BYTES), its bytes read once and
    checked: its size, the real file's SHA-256 when it claims to be it (_check_real), the
    labels."""
    data = read_input_bytes(path, REAL_FILE_BYTES, FILE_KIND)
    _record_count(path, len(data))  # again: the file may have changed since it was sized
    _check_real(path, data)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    wrong = np.flatnonzero(records[:, 0] >= len(CIFAR10_CLASSES))
    if len(wrong):
        raise UserError(f"{path} is corrupt: record {wrong[0]} has label {records[wrong[0], 0]}, "
                        f"outside 0-{len(CIFAR10_CLASSES) - 1}; delete it and fetch it again")
    return records


def _check_real(path: Path, data: bytes) -> None:
    """A file with a real file's name and size claims to be it and must be it: altered bytes
    would otherwise train and score without a word. Files of other sizes (a dataset of one's own
    in CIFAR's format; the tests' tiny ones) are read as they are: there is nothing to check them
    against."""
    expected = CIFAR10_SHA256.get(path.name)
    if expected is None or len(data) != REAL_FILE_BYTES:
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest == expected:
        return
    others = [name for name, known in CIFAR10_SHA256.items() if known == digest]
    what = f"it is {others[0]}" if others else "its SHA-256 is not the real file's"
    raise UserError(f"{path} is altered or corrupt ({what}); delete it and fetch it again")
