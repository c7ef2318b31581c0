"""The pipeline's parts: reading MNIST files, normalization and the validation split
(lenetkit/datasets.py), augmentation (augmentation.py), evaluation (evaluate.py), device choice
(common.py)."""

import gzip
import hashlib
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.datasets import MNIST

import lenetkit.datasets
from lenetkit.augmentation import augment, random_affine, random_erase, random_flip, random_shift
from lenetkit.datasets import (
    DATASETS,
    idx_source,
    load_dataset,
    normalize,
    split_indices,
    training_indices,
)
from lenetkit.environment import has_native_bf16, pick_device
from lenetkit.errors import UserError
from lenetkit.evaluation import evaluate
from lenetkit.model import build_model

from conftest import REAL_DATA_DIR, needs_real_mnist, synthetic_digits, write_idx, write_mnist

(MNIST_MEAN,), (MNIST_STD,) = DATASETS["mnist"].mean, DATASETS["mnist"].std


def test_load_dataset_reads_idx_files_in_torchvisions_layout(tmp_path):
    write_mnist(tmp_path, train_count=30, test_count=20)
    expected_images, expected_labels = synthetic_digits(30, seed=0)
    images, labels = load_dataset(tmp_path, train=True, download=False)
    assert images.dtype == torch.uint8 and images.shape == (30, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (30,)
    assert np.array_equal(images.numpy(), expected_images)
    assert np.array_equal(labels.numpy(), expected_labels)
    assert load_dataset(tmp_path, train=False, download=False)[0].shape == (20, 28, 28)


def gzip_in_place(raw, name: str, keep_bytes: int | None = None, monkeypatch=None) -> None:
    """Replaces raw/name by raw/name.gz and, for the test, publishes that file's MD5 as the real
    one's."""
    compressed = gzip.compress((raw / name).read_bytes())[:keep_bytes]
    (raw / f"{name}.gz").write_bytes(compressed)
    (raw / name).unlink()
    monkeypatch.setitem(lenetkit.datasets.IDX_MD5["mnist"], f"{name}.gz",
                        hashlib.md5(compressed).hexdigest())


def test_the_original_gzipped_files_are_read_without_a_download(tmp_path, monkeypatch):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    gzip_in_place(raw, "train-images-idx3-ubyte", monkeypatch=monkeypatch)
    images, labels = load_dataset(tmp_path, train=True, download=False)
    assert images.shape == (30, 28, 28) and labels.shape == (30,)


def test_a_gzip_file_whose_md5_is_not_the_published_one_is_named_before_any_work(tmp_path):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte.gz is corrupt: its MD5 is not "
                                        r"the published d53e105ee54ea40749a09fcbcd1e9432"):
        load_dataset(tmp_path, train=True, download=False)


def test_a_truncated_gzip_file_is_named_and_leaves_no_partial_file(tmp_path, monkeypatch):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    gzip_in_place(raw, "train-images-idx3-ubyte", keep_bytes=100, monkeypatch=monkeypatch)
    gz = raw / "train-images-idx3-ubyte.gz"
    with pytest.raises(UserError, match=f"{gz} is truncated or corrupt"):
        load_dataset(tmp_path, train=True, download=False)
    assert sorted(path.name for path in raw.iterdir()
                  if path.name.startswith("train-images")) == [gz.name]


def test_missing_files_are_named_with_the_folder_to_put_them_in(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset(tmp_path, train=True, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in message


def test_a_failed_download_ends_in_the_same_clear_error(tmp_path, monkeypatch):
    tried = []

    def offline(self):
        tried.append(self.root)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not "
                           "known")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(UserError, match="MNIST files missing in .*train-images-idx3-ubyte"):
        load_dataset(tmp_path, train=True, download=True)
    assert tried == [str(tmp_path)]  # torchvision was asked


@pytest.mark.parametrize("kept_bytes", [0, 3, 15, 16 + 28 * 28 * 5 + 7])
def test_a_truncated_image_file_is_named_in_the_error(tmp_path, kept_bytes):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:kept_bytes])
    with pytest.raises(UserError, match=f"{images}.* truncated or corrupt"):
        load_dataset(tmp_path, train=True, download=False)


def test_images_and_labels_of_different_counts_are_an_error(tmp_path):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(UserError, match="30 labels|29 labels"):
        load_dataset(tmp_path, train=True, download=False)


def test_labels_outside_0_to_9_are_an_error(tmp_path):
    raw = write_mnist(tmp_path, train_count=30) / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.full(30, 10, dtype=np.uint8))
    with pytest.raises(UserError, match="labels outside 0..9"):
        load_dataset(tmp_path, train=True, download=False)


def test_normalize_adds_a_channel_and_standardizes_with_the_training_statistics():
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    x = normalize(images, MNIST_MEAN, MNIST_STD)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD)
    assert x.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD)


def test_the_validation_split_is_disjoint_complete_and_the_same_every_time():
    train, val = split_indices(100, 20)
    assert len(train) == 80 and len(val) == 20
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again_train, again_val = split_indices(100, 20)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)


def test_the_default_training_indices_leave_out_the_default_validation_split():
    assert torch.equal(training_indices(60_000), split_indices(60_000, 5000)[0])
    # tiny data: a tenth held out
    assert torch.equal(training_indices(200), split_indices(200, 20)[0])


def test_a_smaller_validation_split_is_the_start_of_a_larger_one():
    assert torch.equal(split_indices(100, 20)[1][:10], split_indices(100, 10)[1])


def test_a_validation_size_of_0_holds_nothing_out():
    train, val = split_indices(100, 0)
    assert sorted(train.tolist()) == list(range(100)) and len(val) == 0


def test_a_validation_split_as_large_as_the_data_is_an_error():
    with pytest.raises(UserError, match="validation size"):
        split_indices(100, 100)


def test_random_affine_distorts_each_image_reproducibly_and_keeps_the_black_background():
    images, _ = synthetic_digits(8, seed=3)
    x = normalize(torch.from_numpy(images), MNIST_MEAN, MNIST_STD)
    x[:, :, :8], x[:, :, -8:] = x.min(), x.min()  # black margins, as around MNIST's digits
    black = -MNIST_MEAN / MNIST_STD
    first = random_affine(x, torch.Generator().manual_seed(1), black)
    again = random_affine(x, torch.Generator().manual_seed(1), black)
    other = random_affine(x, torch.Generator().manual_seed(2), black)
    assert first.shape == x.shape and torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.allclose(first, x, atol=0.1)  # the images moved
    # padding is background, not grey
    assert first[:, :, 0].max().item() == pytest.approx(x.min().item())
    no_change = random_affine(x, torch.Generator(), black, rotation=0, scale=0, shear=0, shift=0)
    assert torch.allclose(no_change, x, atol=1e-5)


def test_random_shift_moves_each_image_by_whole_pixels_and_fills_the_edge_with_background():
    x = torch.rand(300, 1, 12, 12) + 1  # every pixel above the background value, -1
    moved = random_shift(x, torch.Generator().manual_seed(0), background=-1.0, shift=2)
    assert torch.equal(moved, random_shift(x, torch.Generator().manual_seed(0), background=-1.0,
                                           shift=2))
    offsets = set()
    for image, shifted in zip(x[:, 0], moved[:, 0]):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(shifted, torch.roll(image, (dy, dx), (0, 1)).where(
                     roll_mask(12, dy, dx), torch.tensor(-1.0)))]
        assert len(found) == 1  # exactly one whole-pixel shift explains the image
        offsets.add(found[0])
    assert len(offsets) == 25  # all 5 x 5 offsets occur


def test_reflect_shifts_by_whole_pixels_and_fills_the_edge_with_the_images_reflection():
    x = torch.rand(300, 2, 12, 12)
    moved = random_shift(x, torch.Generator().manual_seed(0), background=None, shift=2)
    reflected = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")  # 16 x 16
    offsets = set()
    for image, shifted in zip(reflected, moved):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(shifted, image[:, dy:dy + 12, dx:dx + 12])]
        assert len(found) == 1  # a 12 x 12 window of the reflected image, the same in each channel
        offsets.add(found[0])
    assert len(offsets) == 25
    assert augment(x, "reflect", torch.Generator().manual_seed(0), background=-1.0).min() >= 0


def roll_mask(size: int, dy: int, dx: int) -> Tensor:
    """Where an image rolled by (dy, dx) shows its own pixels rather than ones wrapped round the
    edge."""
    rows, cols = torch.arange(size)[:, None] - dy, torch.arange(size)[None, :] - dx
    return (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)


def test_random_flip_mirrors_about_half_the_images_left_to_right():
    x = torch.arange(200 * 4, dtype=torch.float32).view(200, 1, 2, 2)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    # each image whole: as it was, or mirrored
    assert ((flipped == x).flatten(1).all(1) | mirrored).all()
    assert 70 < mirrored.sum() < 130


def test_random_erasing_blanks_one_rectangle_in_about_half_the_images():
    x = torch.ones(200, 1, 28, 28)
    erased = random_erase(x, torch.Generator().manual_seed(0)) == 0
    touched = erased.flatten(1).any(1)
    assert 70 < touched.sum() < 130
    for mask in erased[touched, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # one solid rectangle
        # the area asked for, give or take rounding
        assert 0.02 * 784 * 0.7 <= mask.sum() <= 0.33 * 784 * 1.15


def test_augment_applies_the_listed_distortions_reproducibly():
    x = torch.randn(16, 1, 28, 28)
    run = lambda names, seed=0: augment(x, names, torch.Generator().manual_seed(seed),
                                        background=-1.0)
    assert torch.equal(run("none"), x)
    assert torch.equal(run("flip,erase"), run("flip,erase"))
    assert not torch.equal(run("flip,erase", 1), run("flip,erase"))
    assert torch.equal(run("flip"), random_flip(x, torch.Generator().manual_seed(0)))


class Oracle(nn.Module):
    """Scores its input's first pixel as the class: a model whose right answers we know."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float() * 10


def test_evaluate_reports_loss_accuracy_and_probabilities_in_any_batch_size():
    labels = torch.arange(10).repeat(3)
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    images[:3, 0, 0, 0] = (labels[:3] + 1) % 10  # three wrong answers
    result = evaluate(Oracle(), images, labels, batch_size=7)
    assert result.accuracy == pytest.approx(27 / 30)
    assert result.probabilities.shape == (30, 10)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(30))
    expected_loss = nn.functional.cross_entropy(Oracle()(images), labels).item()
    assert result.loss == pytest.approx(expected_loss)


def test_evaluate_with_amp_runs_the_model_in_bfloat16_and_agrees_with_float32():
    torch.manual_seed(0)
    model = build_model("convnet", width=8)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    dtypes = []
    model.classifier.register_forward_hook(
        lambda module, inputs, output: dtypes.append(output.dtype))
    full, half = evaluate(model, images, labels), evaluate(model, images, labels, amp=True)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert half.probabilities.dtype == torch.float32
    assert torch.allclose(half.probabilities, full.probabilities, atol=0.02)
    assert half.loss == pytest.approx(full.loss, rel=0.02)


def test_evaluate_leaves_the_model_in_the_mode_it_found_it():
    model = Oracle()
    model.train()
    evaluate(model, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert model.training
    model.eval()
    evaluate(model, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert not model.training


def test_pick_device_names_the_cpu_and_refuses_unknown_devices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(UserError, match="not available"):
        pick_device("tpu")


def test_bf16_is_native_on_cpus_with_avx512_bf16_or_amx_and_on_gpus_from_ampere(monkeypatch):
    for avx512_bf16, amx in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda x=avx512_bf16: x)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda x=amx: x)
        assert has_native_bf16(torch.device("cpu")) is (avx512_bf16 or amx)
    for capability, native in [((7, 5), False), ((8, 0), True), ((9, 0), True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda device, x=capability: x)
        assert has_native_bf16(torch.device("cuda")) is native


@needs_real_mnist
def test_the_real_mnist_has_its_published_sizes_labels_and_statistics():
    images, labels = load_dataset(REAL_DATA_DIR, train=True, download=False)
    assert images.shape == (60_000, 28, 28)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                               5851, 5949]
    pixels = images.float() / 255
    assert pixels.mean().item() == pytest.approx(MNIST_MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(MNIST_STD, abs=1e-4)
    test_images, test_labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    assert test_images.shape == (10_000, 28, 28)
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_published_md5s_are_torchvisions(dataset):
    assert list(lenetkit.datasets.IDX_MD5[dataset].items()) == list(
        idx_source(DATASETS[dataset]).resources)


@needs_real_mnist
def test_the_real_gzip_files_pass_the_md5_check():
    raw = REAL_DATA_DIR / "MNIST" / "raw"
    if not all((raw / f"{name}").is_file() for name in lenetkit.datasets.IDX_MD5["mnist"]):
        pytest.skip(f"the .gz files are not in {raw}")
    load_dataset(REAL_DATA_DIR, train=True, download=False)
    load_dataset(REAL_DATA_DIR, train=False, download=False)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_download_without_torchvision_says_to_install_it_not_that_it_is_offline(dataset, tmp_path,
                                                                                   monkeypatch):
    for name in ["torchvision", *(name for name in sys.modules if name.startswith("torchvision."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(UserError, match=r"^this needs the torchvision package: "
                                        r"pip install -r requirements.txt$"):
        load_dataset(tmp_path, train=True, download=True, dataset=dataset)
