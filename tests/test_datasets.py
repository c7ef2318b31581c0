"""The dataset is a setting: Fashion-MNIST beside MNIST, its identity carried in the model file."""

import json

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import FashionMNIST

from lenetkit.datasets import DATASETS, load_dataset, normalize
from lenetkit.errors import UserError
from lenetkit.modelfile import read_model_file, with_dataset
from lenetkit.preprocess import preprocess_garment

from conftest import REAL_DATA_DIR, TINY_TRAINING, needs_real_fashion, run_main, write_mnist


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory):
    """A tiny dataset in Fashion-MNIST's folder, and a model trained on it."""
    root = write_mnist(tmp_path_factory.mktemp("tiny_fashion"), folder="FashionMNIST")
    out = root / "fashion.pth"
    run_main("train.py", "--dataset", "fashion-mnist", "--data-dir", root, "--out", out,
             "--epochs", "2", "--augment", *TINY_TRAINING)
    return root, out


def test_a_dataset_is_read_from_its_own_torchvision_folder(tmp_path):
    write_mnist(tmp_path, train_count=30, test_count=10, folder="FashionMNIST")
    images, labels = load_dataset(tmp_path, train=True, download=False, dataset="fashion-mnist")
    assert images.shape == (30, 28, 28) and labels.shape == (30,)
    with pytest.raises(UserError, match="MNIST files missing in .*/MNIST/raw"):
        load_dataset(tmp_path, train=True, download=False, dataset="mnist")


def test_missing_fashion_files_are_named_with_their_folder(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset(tmp_path, train=False, download=False, dataset="fashion-mnist")
    message = str(error.value)
    assert "FashionMNIST/raw" in message and "t10k-images-idx3-ubyte.gz" in message


def test_the_model_file_carries_the_dataset_its_classes_normalization_and_input_shape(tiny_fashion):
    _, model = tiny_fashion
    record = read_model_file(model)
    assert record["dataset"] == "fashion-mnist" and record["input_shape"] == [1, 28, 28]
    assert record["classes"] == list(FashionMNIST.classes)
    assert record["normalization"] == {"mean": [0.2860], "std": [0.3530]}
    # --augment alone: what suits clothing photos
    assert record["metadata"]["augment"] == "flip,erase"


def test_a_fashion_model_is_not_scored_on_digits_by_mistake(tiny_fashion):
    root, model = tiny_fashion
    result = run_main("evaluate.py", "--model", model, "--dataset", "mnist", "--data-dir", root,
                      "--no-download", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {model} is a fashion-mnist model; it can't be "
                                     "scored on mnist")


def test_models_of_two_datasets_are_not_scored_together(tiny_fashion, tiny_model):
    root, model = tiny_fashion
    result = run_main("evaluate.py", "--model", model, tiny_model, "--data-dir", root,
                      "--no-download", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {model} is a fashion-mnist model and {tiny_model} "
                                     "a mnist one: models scored together must have learned the "
                                     "same dataset")


def test_evaluate_scores_a_fashion_model_on_fashion_test_images_and_names_the_classes(tiny_fashion):
    root, model = tiny_fashion
    report = json.loads(run_main("evaluate.py", "--model", model, "--data-dir", root,
                                 "--no-download", "--json").stdout)["models"][0]
    assert report["images"] == 200 and report["accuracy"] > 0.3  # chance is 0.1
    text = run_main("evaluate.py", "--model", model, "--data-dir", root, "--no-download").stdout
    assert "Ankle boot" in text and "T-shirt/top" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("class"))
    table = text.split(header + "\n")[1].split("\n\n")[0].splitlines()
    # long names keep the columns aligned
    assert len(table) == 10 and {len(row) for row in table} == {len(header)}


def test_predictions_print_class_names(tiny_fashion, tmp_path):
    _, model = tiny_fashion
    photo = np.full((300, 200), 255, dtype=np.uint8)  # a dark garment on a white table
    photo[60:240, 50:150] = 40
    Image.fromarray(photo).save(tmp_path / "garment.png")
    result = run_main("load_model.py", "--model", model, tmp_path / "garment.png")
    assert any(name in result.stdout for name in FashionMNIST.classes)


def test_a_garment_photo_becomes_light_on_black_filling_the_frame():
    photo = np.full((300, 200), 230, dtype=np.uint8)
    photo[60:240, 50:110] = 30  # 180 x 60: tall and narrow
    garment = preprocess_garment(Image.fromarray(photo))
    assert garment.shape == (28, 28)
    rows, cols = (garment > 0.5).nonzero(as_tuple=True)
    assert rows.min() == 0 and rows.max() == 27  # the longer side fills the frame
    # the shorter keeps its proportion (28 / 3), centred
    assert 7 <= cols.max() - cols.min() + 1 <= 11
    assert garment[0, 0] == 0  # background black, as in Fashion-MNIST


def test_model_files_from_before_datasets_are_mnist_models():
    assert with_dataset({"arch": "lenet"})["dataset"] == "mnist"
    assert with_dataset({"arch": "lenet", "dataset": "fashion-mnist"})["dataset"] == "fashion-mnist"


@needs_real_fashion
def test_the_fashion_normalization_constants_are_those_of_its_training_images():
    images, labels = load_dataset(REAL_DATA_DIR, train=True, download=False,
                                  dataset="fashion-mnist")
    pixels = images.double() / 255
    assert images.shape == (60000, 28, 28) and labels.bincount().tolist() == [6000] * 10
    assert pixels.mean().item() == pytest.approx(DATASETS["fashion-mnist"].mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(DATASETS["fashion-mnist"].std[0], abs=1e-4)
    fashion = DATASETS["fashion-mnist"]
    assert normalize(images[:1000], fashion.mean, fashion.std).mean().abs() < 0.2


@pytest.mark.slow
@needs_real_fashion
def test_a_short_fashion_training_run_learns_far_above_chance(tmp_path):
    out = tmp_path / "fashion.pth"
    run_main("train.py", "--dataset", "fashion-mnist", "--data-dir", REAL_DATA_DIR, "--out", out,
             "--epochs", "1", "--no-download")
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.75 and metrics["test"]["accuracy"] > 0.75  # chance is 0.1
