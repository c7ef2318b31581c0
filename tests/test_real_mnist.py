"""On the real MNIST (skipped when it is absent): the default and fast runs' accuracy, the committed
model's score as the README states it, and the predictor on real digits photographed large."""

import json
import re

import pytest
import torch

from lenetkit.config import parse_args
from lenetkit.datasets import load_dataset, normalize
from lenetkit.environment import PRETRAINED_MODEL_PATH, PROJECT_DIR
from lenetkit.evaluation import evaluate
from lenetkit.modelfile import build_from_record, read_model_file
from lenetkit.prediction import predict_images
from lenetkit.preprocess import preprocess_digit
from lenetkit.training import train

from conftest import REAL_DATA_DIR, needs_real_mnist, run_main
from photos import redrawn

pytestmark = needs_real_mnist


@pytest.mark.slow
def test_the_default_training_run_reaches_99_percent_test_accuracy_without_a_setback(tmp_path):
    out = tmp_path / "mnist_model.pth"
    run_main("train.py", "--data-dir", REAL_DATA_DIR, "--out", out, "--no-download")
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.99
    accuracies = [row["val_accuracy"] for row in metrics["history"]]
    assert all(later >= earlier - 0.005 for earlier, later in zip(accuracies, accuracies[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_the_default_recipe_learns_from_5000_images_in_one_epoch(tmp_path, seed):
    """A quick check on a subset learns too: the default's learning rate is not at the edge of
    stability, where a short run can stay at chance."""
    out = tmp_path / "quick.pth"
    run_main("train.py", "--train-size", "5000", "--epochs", "1", "--seed", seed,
             "--data-dir", REAL_DATA_DIR, "--out", out, "--no-download")
    assert json.loads(out.with_suffix(".metrics.json").read_text())["val_accuracy"] > 0.5


@pytest.mark.slow
def test_the_fast_recipe_reaches_99_percent_test_accuracy_in_one_pass(tmp_path):
    out = tmp_path / "fast.pth"
    run_main("train.py", "--config", PROJECT_DIR / "configs" / "fast.json", "--data-dir",
             REAL_DATA_DIR, "--out", out, "--no-download")
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert len(metrics["history"]) == 1 and metrics["test"]["accuracy"] >= 0.99


def test_the_committed_model_scores_what_the_readme_says():
    readme = (PROJECT_DIR / "README.md").read_text()
    stated = re.search(r"committed\s+`mnist_model.pth`\s+scores\s+\*\*(\d+\.\d+)%\*\*", readme)
    assert stated, "the README states the committed model's test accuracy"
    record = read_model_file(PRETRAINED_MODEL_PATH)
    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    result = evaluate(build_from_record(record), normalize(images, **record["normalization"]),
                      labels)
    assert f"{100 * result.accuracy:.2f}" == stated.group(1)


@pytest.mark.slow
def test_real_digits_drawn_large_inverted_and_off_centre_are_still_recognised():
    """MNIST test digits, blown up 10x as dark ink on white paper in a corner of a larger page,
    go through the predictor's preprocessing and mostly come back as the model reads the
    originals."""
    record = read_model_file(PRETRAINED_MODEL_PATH)
    model = build_from_record(record)
    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    images, labels = images[:300], labels[:300]
    pages = [preprocess_digit(redrawn(image.numpy())) for image in images]
    predicted = predict_images(model, record, torch.stack(pages)).argmax(1)
    assert (predicted == labels).float().mean().item() >= 0.97


@pytest.mark.slow
def test_the_stronger_model_learns_real_digits_with_augmentation_and_a_weight_average(tmp_path):
    """Judged on validation: the test set is the default run's to report (above)."""
    metrics = train(*parse_args([
        "--arch", "convnet", "--augment", "--ema", "0.99", "--label-smoothing", "0.1", "--epochs",
        "2", "--train-size", "4000", "--val-size", "1000", "--batch-size", "100", "--lr", "0.005",
        "--data-dir", str(REAL_DATA_DIR), "--out", str(tmp_path / "convnet.pth"),
        "--no-download"]), report_test=False)
    first, second = metrics["history"]
    assert metrics["settings"]["augment"] == "affine" and metrics["settings"]["ema"] == 0.99
    assert second["val_accuracy"] > first["val_accuracy"] and second["val_accuracy"] > 0.9
    assert second["raw_val_accuracy"] > 0.9  # the raw weights, scored beside their average
