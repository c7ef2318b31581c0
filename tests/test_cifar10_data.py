"""CIFAR-10's binary version: how lenetkit/cifar10.py reads it (tiny files of known pixels), each
way a file can be wrong, the download when files are missing (never the network: it is replaced),
and the real files when they are here."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lenetkit.cifar10
from lenetkit.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_URL,
    REAL_FILE_BYTES,
    RECORD_BYTES,
    cifar10_files,
    load_cifar10,
)
from lenetkit.errors import UserError

from conftest import REAL_DATA_DIR, needs_real_cifar10

# What lenetkit/cifar10.py calls to fetch the tarball (imported there only when a download is
# wanted).
TORCHVISION_DOWNLOAD = "torchvision.datasets.utils.download_and_extract_archive"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the network: the download fails as it does offline, unless a test
    replaces it."""
    def no_network(*args, **kwargs):
        raise OSError("no network in the tests")
    monkeypatch.setattr(TORCHVISION_DOWNLOAD, no_network)


def record(label: int, red: int, green: int, blue: int) -> bytes:
    """One record: the label byte, then a plane of `red`, one of `green`, one of `blue`, except
    that each plane's first row counts 0, 1, ..., 31 (so that rows and columns can be told
    apart)."""
    planes = np.array([red, green, blue], dtype=np.uint8).repeat(1024).reshape(3, 32, 32)
    planes[:, 0, :] = np.arange(32)
    return bytes([label]) + planes.tobytes()


def write_split(root: Path, train: bool, first_label: int = 0) -> Path:
    """Each file of a split, three records a file: record k of file f has label
    (first_label + 3f + k) % 10 and planes 10f + k (red), 100 + 10f + k (green), 200 + 10f + k
    (blue). Returns the folder."""
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for f, name in enumerate(cifar10_files(train)):
        records = [record((first_label + 3 * f + k) % 10, 10 * f + k, 100 + 10 * f + k,
                          200 + 10 * f + k) for k in range(3)]
        (folder / name).write_bytes(b"".join(records))
    return folder


def test_the_files_of_each_split():
    assert cifar10_files(True) == tuple(f"data_batch_{n}.bin" for n in range(1, 6))
    assert cifar10_files(False) == ("test_batch.bin",)
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane"
    assert CIFAR10_CLASSES[-1] == "truck"


def test_the_training_files_are_read_in_order_with_red_green_blue_planes(tmp_path):
    write_split(tmp_path, train=True)
    images, labels = load_cifar10(tmp_path, train=True, download=False)
    assert images.shape == (15, 3, 32, 32) and images.dtype == torch.uint8
    assert images.is_contiguous()
    assert labels.shape == (15,) and labels.dtype == torch.int64
    assert labels.tolist() == [n % 10 for n in range(15)]  # file order, then record order
    planes = [10 * f + k for f in range(5) for k in range(3)]  # 0, 1, 2, 10, 11, 12, ...
    below_first_row = images[:, :, 1:].amin(dim=(2, 3))
    assert below_first_row.tolist() == [[n, 100 + n, 200 + n] for n in planes]
    assert images[4, 0, 0].tolist() == list(range(32))  # rows are rows: the first counts


def test_the_test_split_is_test_batch_alone(tmp_path):
    write_split(tmp_path, train=False, first_label=7)
    images, labels = load_cifar10(tmp_path, train=False, download=False)
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [7, 8, 9]
    assert images[2, :, 5, 5].tolist() == [2, 102, 202]


def test_the_images_are_writable_and_their_own(tmp_path):
    write_split(tmp_path, train=False)
    images, labels = load_cifar10(tmp_path, train=False, download=False)
    images[0] = 0  # no "non-writable array" warning, no shared read-only buffer
    labels[0] = 9
    assert images[0].sum() == 0 and labels[0] == 9


@pytest.mark.parametrize("size", [RECORD_BYTES - 1, 2 * RECORD_BYTES + 5, 0])
def test_a_file_that_is_not_whole_records_is_truncated_or_corrupt(tmp_path, size):
    folder = write_split(tmp_path, train=False)
    path = folder / "test_batch.bin"
    path.write_bytes((path.read_bytes() * 2)[:size])
    expected = f"^{re.escape(str(path))} is truncated or corrupt .*fetch it again$"
    with pytest.raises(UserError, match=expected):
        load_cifar10(tmp_path, train=False, download=False)


@pytest.mark.parametrize("short, split", [("data_batch_3.bin", True), ("test_batch.bin", False),
                                          ("test_batch.bin", True)])
def test_a_file_a_record_short_is_truncated_whichever_split_is_read(tmp_path, short, split):
    """The folder is checked whole: a training run finds a short test file before it trains."""
    write_split(tmp_path, train=True)
    folder = write_split(tmp_path, train=False)
    path = folder / short
    path.write_bytes(path.read_bytes()[:-RECORD_BYTES])
    expected = (f"^{re.escape(str(path))} is truncated or corrupt \\(2 records, the other files 3 "
                "each\\); delete it and fetch it again$")
    with pytest.raises(UserError, match=expected):
        load_cifar10(tmp_path, train=split, download=False)


def test_a_label_above_9_is_corrupt(tmp_path):
    folder = write_split(tmp_path, train=True)
    path = folder / "data_batch_3.bin"
    path.write_bytes(record(3, 0, 0, 0) + record(10, 0, 0, 0) + record(3, 0, 0, 0))
    expected = f"^{re.escape(str(path))} is corrupt: record 1 has label 10, outside 0-9"
    with pytest.raises(UserError, match=expected):
        load_cifar10(tmp_path, train=True, download=False)


def test_a_file_of_the_real_size_must_be_the_real_file(tmp_path):
    folder = tmp_path / CIFAR10_FOLDER
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(REAL_FILE_BYTES))  # zeros: labels all valid
    with pytest.raises(UserError) as error:
        load_cifar10(tmp_path, train=False, download=False)
    assert str(error.value) == (f"{folder / 'test_batch.bin'} is altered or corrupt (its SHA-256 "
                                "is not the real file's); delete it and fetch it again")


def test_a_real_file_under_another_real_files_name_is_named(tmp_path, monkeypatch):
    """Stands in a known digest for the zeros', as if they were the real test_batch.bin."""
    folder = tmp_path / CIFAR10_FOLDER
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(REAL_FILE_BYTES))
    zeros = hashlib.sha256(bytes(REAL_FILE_BYTES)).hexdigest()
    monkeypatch.setitem(lenetkit.cifar10.CIFAR10_SHA256, "data_batch_2.bin", zeros)
    with pytest.raises(UserError, match=r"\(it is data_batch_2.bin\); delete it"):
        load_cifar10(tmp_path, train=False, download=False)


def test_missing_files_are_named_with_their_folder(tmp_path):
    write_split(tmp_path, train=True)
    (tmp_path / CIFAR10_FOLDER / "data_batch_4.bin").unlink()
    with pytest.raises(UserError) as error:
        load_cifar10(tmp_path, train=True, download=False)
    assert str(error.value) == (f"CIFAR-10 files missing in {tmp_path / CIFAR10_FOLDER} "
                                "(data_batch_4.bin); put the files of cifar-10-binary.tar.gz "
                                "there, or run once with a network connection to download them")


def test_offline_the_failed_download_leaves_the_same_message(tmp_path):
    with pytest.raises(UserError, match="files missing in .*cifar-10-batches-bin \\(test_batch.bin"
                                        "\\); .*with a network connection"):
        load_cifar10(tmp_path, train=False)  # the autouse fixture's download raises


def test_missing_files_are_downloaded_from_the_official_tarball(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5):
        calls.append((url, Path(download_root), md5))
        write_split(Path(download_root), train=False, first_label=4)  # as unpacking would
    monkeypatch.setattr(TORCHVISION_DOWNLOAD, fake_download)
    images, labels = load_cifar10(tmp_path, train=False)
    assert calls == [(CIFAR10_URL, tmp_path, CIFAR10_MD5)]
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert labels.tolist() == [4, 5, 6] and images.shape == (3, 3, 32, 32)
    load_cifar10(tmp_path, train=False)
    assert len(calls) == 1  # present files are not fetched again


def test_no_download_when_download_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(TORCHVISION_DOWNLOAD,
                        lambda *args, **kwargs: pytest.fail("downloaded with download=False"))
    with pytest.raises(UserError, match="files missing"):
        load_cifar10(tmp_path, train=True, download=False)


@needs_real_cifar10
def test_the_real_cifar10():
    images, labels = load_cifar10(REAL_DATA_DIR, train=True, download=False)
    assert images.shape == (50000, 3, 32, 32) and labels.bincount().tolist() == [5000] * 10
    assert images[0, 0, 0, :3].tolist() == [59, 43, 50]  # data_batch_1's first image, red plane
    assert labels[:5].tolist() == [6, 9, 9, 4, 1]
    sums = images.numpy().sum(axis=(0, 2, 3), dtype=np.uint64)  # exact, without a float copy
    mean = sums / (50000 * 1024 * 255)
    assert mean.tolist() == pytest.approx([0.49139968, 0.48215841, 0.44653091], abs=1e-6)
    images, labels = load_cifar10(REAL_DATA_DIR, train=False, download=False)
    assert images.shape == (10000, 3, 32, 32) and labels.bincount().tolist() == [1000] * 10
    assert images[0, 0, 0, :3].tolist() == [158, 159, 165]
    assert labels[:5].tolist() == [3, 8, 8, 0, 6]
