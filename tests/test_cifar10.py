"""CIFAR-10 through the whole pipeline: its network and settings, model files that carry its
colour input and per-channel normalization, augmentation of colour batches, predictions on
ordinary photos, ONNX, and a short run on the real files when they are here."""

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import lenetkit.config
import lenetkit.training
from lenetkit.augmentation import random_flip, random_shift
from lenetkit.datasets import DATASETS, black, load_dataset, normalize, split_indices
from lenetkit.evaluation import learned_mirrors
from lenetkit.model import build_model
from lenetkit.modelfile import ModelFileError, read_model_file
from lenetkit.prediction import Predictor
from lenetkit.preprocess import ImageError, preprocess_photo

from conftest import (
    PROJECT_DIR,
    REAL_DATA_DIR,
    needs_real_cifar10,
    run_main,
    write_cifar10,
    write_mnist,
)

CIFAR10 = DATASETS["cifar10"]
TINY = ("--val-size", "100", "--batch-size", "50", "--no-download", "--width", "8")


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("tiny_cifar10"))


@pytest.fixture(scope="module")
def cifar_model(tiny_cifar10, tmp_path_factory):
    """A CIFAR-10 model file trained for three epochs on the tiny stand-ins."""
    out = tmp_path_factory.mktemp("cifar_model") / "model.pth"
    run_main("train.py", "--dataset", "cifar10", "--data-dir", tiny_cifar10, "--out", out,
             "--epochs", "3", "--lr", "0.02", "--augment", *TINY)
    return out


def test_normalize_standardizes_each_colour_channel_with_its_own_statistics():
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    x = normalize(images, **CIFAR10.normalization)
    expected = [(1 - mean) / std for mean, std in zip(CIFAR10.mean, CIFAR10.std)]
    assert x.shape == (2, 3, 32, 32)
    assert x[0, :, 5, 5].tolist() == pytest.approx(expected, rel=1e-6)


def test_shifts_of_colour_images_fill_each_channel_with_its_black():
    images = torch.ones(4, 3, 32, 32)
    moved = random_shift(images, torch.Generator().manual_seed(0), black(CIFAR10), shift=2)
    edge = moved != 1
    assert edge.any()
    for channel, value in enumerate(black(CIFAR10).flatten().tolist()):
        assert moved[:, channel][edge[:, channel]].unique().tolist() == pytest.approx([value])
    flipped = random_flip(torch.arange(32.0).expand(8, 3, 32, 32), torch.Generator().manual_seed(1))
    assert {tuple(image[:, 0, 0].tolist()) for image in flipped} == {(0.0,) * 3, (31.0,) * 3}


def test_train_picks_the_cifar_network_and_augment_alone_its_augmentation(cifar_model):
    record = read_model_file(cifar_model)
    assert record["arch"] == "cifarnet" and record["input_shape"] == [3, 32, 32]
    assert record["normalization"] == CIFAR10.normalization
    assert record["classes"] == list(CIFAR10.classes)
    assert record["metadata"]["augment"] == "shift,flip"
    assert record["metadata"]["val_accuracy"] > 0.3  # chance is 0.1


def test_a_network_for_other_images_is_refused_in_one_line(tiny_cifar10, tmp_path):
    result = run_main("train.py", "--dataset", "cifar10", "--arch", "lenet", "--data-dir",
                      tiny_cifar10, "--out", tmp_path / "m.pth", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: argument --arch: the lenet takes images of 1x28x28, cifar10's are "
        "3x32x32; networks for them: cifarnet")
    result = run_main("train.py", "--arch", "cifarnet", "--data-dir", tmp_path,
                      "--out", tmp_path / "m.pth", check=False)
    assert "the cifarnet takes images of 3x32x32, mnist's are 1x28x28" in result.stderr


def test_a_cifar_model_is_scored_only_on_cifar10(cifar_model, tiny_cifar10, tmp_path):
    write_mnist(tiny_cifar10 / "elsewhere")
    result = run_main("evaluate.py", "--model", cifar_model, "--data-dir", tiny_cifar10,
                      "--dataset", "mnist", "--no-download", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {cifar_model} is a cifar10 model; it can't be "
                                     "scored on mnist")
    scores = json.loads(run_main("evaluate.py", "--model", cifar_model, "--data-dir",
                                 tiny_cifar10, "--no-download", "--json", "--tta").stdout)
    # Its recipe flipped images, so test-time augmentation shows it the mirror images too.
    assert scores["models"][0]["views"] == 10 and scores["models"][0]["accuracy"] > 0.3


def test_a_model_file_whose_shape_or_normalization_is_not_its_datasets_is_refused(cifar_model,
                                                                                   tmp_path):
    record = torch.load(cifar_model, weights_only=True)
    for change, message in (
            ({"dataset": "mnist"}, "input_shape must be [1, 28, 28], not list [3, 32, 32]"),
            ({"dataset": "mnist", "input_shape": [1, 28, 28]},
             "the cifarnet takes images of 3x32x32, mnist's are 1x28x28; networks for them: lenet"),
            ({"normalization": {"mean": [0.5], "std": [0.2]}},
             "normalization.mean must be 3 numbers, one a channel"),
            ({"input_shape": [3, 28, 28]}, "input_shape must be [3, 32, 32]")):
        torch.save({**record, **change}, tmp_path / "changed.pth")
        with pytest.raises(ModelFileError, match=re.escape(message)):
            read_model_file(tmp_path / "changed.pth")


def test_a_photo_is_framed_as_cifar_frames_its_images():
    # A wide photo: red, then green in the middle square, then blue.
    photo = np.zeros((100, 300, 3), dtype=np.uint8)
    photo[:, :100, 0], photo[:, 100:200, 1], photo[:, 200:, 2] = 255, 255, 255
    framed = preprocess_photo(Image.fromarray(photo))
    assert framed.shape == (3, 32, 32) and framed.dtype == torch.float32
    assert framed[:, 16, 16].tolist() == pytest.approx([0, 1, 0], abs=1e-6)
    assert framed[1].mean() > 0.99  # the shorter side whole: only the middle square is kept


def test_gray_photos_of_more_than_8_bits_are_stretched_not_clipped():
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    as_8_bits = preprocess_photo(Image.fromarray(np.round(ramp * 255).astype(np.uint8)))
    for image in (Image.fromarray(ramp), Image.fromarray((ramp * 65535).astype(np.uint16))):
        framed = preprocess_photo(image)
        assert framed.shape == (3, 32, 32)
        assert torch.allclose(framed, as_8_bits, atol=2 / 255)


def test_a_tensor_outside_0_to_1_is_refused_as_not_prepared(cifar_model):
    images = torch.rand(2, 3, 32, 32)
    predictor = Predictor(cifar_model)
    predictor(images)  # pixels in [0, 1]: fine
    for wrong in (normalize((images * 255).byte(), **CIFAR10.normalization), images * 255):
        with pytest.raises(ImageError,
                           match=r"give them in \[0, 1\] \(or uint8\), before normalization"):
            predictor(wrong)


def test_photos_files_arrays_and_tensors_give_the_same_prediction(cifar_model, tiny_cifar10,
                                                                   tmp_path):
    images, _ = load_dataset(tiny_cifar10, train=False, download=False, dataset="cifar10")
    predictor = Predictor(cifar_model)
    pixels = images[:6].permute(0, 2, 3, 1).numpy()
    from_tensors = predictor(images[:6])
    for index, array in enumerate(pixels):
        big = Image.fromarray(array).resize((96, 96), Image.Resampling.NEAREST)
        big.save(tmp_path / f"{index}.png")
        from_file = predictor(tmp_path / f"{index}.png")
        assert from_file.input.shape == (3, 32, 32)
        assert from_file.label == predictor(big).label == predictor(array).label
        assert from_file.label == from_tensors[index].label
    result = run_main("load_model.py", "--model", cifar_model, "--out-dir", tmp_path / "in",
                      tmp_path / "0.png")
    assert result.stdout.startswith(f"{tmp_path / '0.png'}: {from_tensors[0].name} (")
    assert Image.open(tmp_path / "in" / "0.input.png").size == (32, 32)


@pytest.mark.slow
def test_a_cifar_model_exports_to_onnx_and_int8(cifar_model, tiny_cifar10, tmp_path):
    pytest.importorskip("onnxruntime")
    for form, name in (("onnx", "m.onnx"), ("onnx-int8", "m.int8.onnx")):
        run_main("save_model.py", cifar_model, "--format", form, "--out", tmp_path / name,
                 "--data-dir", tiny_cifar10)
    exact, onnx = Predictor(cifar_model), Predictor(tmp_path / "m.onnx")
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(exact.model(images), onnx.model(images), atol=1e-4)
    assert Predictor(tmp_path / "m.int8.onnx")(images[0]).input.shape == (3, 32, 32)
    assert learned_mirrors(read_model_file(tmp_path / "m.onnx"))  # so evaluate --tta mirrors


@pytest.mark.slow
@needs_real_cifar10
def test_a_short_run_of_the_fast_recipe_on_the_real_cifar10_learns_far_above_chance(tmp_path):
    """The recipe shrunk: a quarter of its batch at airbench's rate for it, width 8, 5,000
    images. (AdamW on CIFAR-10 trains in the tests on the tiny files.)"""
    metrics = lenetkit.training.train(*lenetkit.config.parse_args([
        "--config", str(PROJECT_DIR / "configs" / "cifar10-fast.json"), "--epochs", "3",
        "--batch-size", "256", "--lr", "0.375", "--data-dir", str(REAL_DATA_DIR), "--out",
        str(tmp_path / "model.pth"), "--train-size", "5000", "--width", "8", "--no-download"]),
        report_test=False)  # judged on validation, as a choice would be
    assert metrics["val_accuracy"] > 0.3  # chance: 0.1


def test_the_server_answers_a_colour_photo_for_a_cifar_model(cifar_model):
    import lenetkit.server

    photo = io.BytesIO()
    Image.fromarray(np.full((60, 90, 3), (200, 30, 30), dtype=np.uint8)).save(photo, "JPEG")
    with lenetkit.server.Model(cifar_model) as model:
        assert model.info()["dataset"] == "cifar10"
        answer = model.answer(photo.getvalue())
    seen = Image.open(io.BytesIO(base64.b64decode(answer["input"].split(",", 1)[1])))
    assert seen.size == (32, 32) and seen.mode == "RGB"
    assert seen.getpixel((16, 16))[0] > 150 > seen.getpixel((16, 16))[1]  # still red: in colour
    assert answer["name"] in DATASETS["cifar10"].classes


def test_training_keeps_the_whitened_stem_of_the_first_training_images(cifar_model, tiny_cifar10,
                                                                       tmp_path):
    images, _ = load_dataset(tiny_cifar10, train=True, download=False, dataset="cifar10")
    train_indices, _ = split_indices(len(images), int(TINY[TINY.index("--val-size") + 1]))
    torch.manual_seed(0)  # train.py's default seed: the runs' random start
    model = build_model("cifarnet", width=8)
    stem = model.features[0]
    random_weight, random_bias = stem.weight.clone(), stem.bias.clone()
    model.whiten(normalize(images[train_indices], **CIFAR10.normalization))
    trained = read_model_file(cifar_model)["state_dict"]
    assert torch.allclose(trained["features.0.weight"], stem.weight, atol=1e-6)
    assert torch.equal(stem.bias, random_bias)  # whitening sets the filters only...
    assert not torch.allclose(trained["features.0.bias"], random_bias)  # ...and the bias learned

    out = tmp_path / "plain.pth"
    run_main("train.py", "--dataset", "cifar10", "--data-dir", tiny_cifar10, "--out", out,
             "--epochs", "1", "--no-whiten", *TINY)
    learned = read_model_file(out)["state_dict"]["features.0.weight"]
    assert not torch.allclose(learned, random_weight, atol=1e-4)  # learned from the random start


def test_whitening_reads_at_most_its_first_images(monkeypatch):
    monkeypatch.setattr(lenetkit.training, "WHITENING_IMAGES", 10)
    images = torch.randn(50, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config = lenetkit.training.TrainConfig(dataset="cifar10", arch="cifarnet", width=8)
    training = lenetkit.training.setup_training(config, 1, torch.device("cpu"), images=images)
    expected = build_model("cifarnet", width=8)
    expected.whiten(images[:10])
    assert torch.equal(training.model.features[0].weight, expected.features[0].weight)
    with pytest.raises(ValueError, match="pass images"):
        lenetkit.training.setup_training(config, 1, torch.device("cpu"))


def test_only_the_cifar_network_can_go_without_whitening(tmp_path):
    result = run_main("train.py", "--no-whiten", "--out", tmp_path / "m.pth", check=False)
    assert result.returncode == 2
    assert ("argument --no-whiten: the lenet has no whitened first layer (only cifarnet has)"
            in result.stderr)
