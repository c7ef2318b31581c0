"""Which model answers: the scripts name the model file they use, and mnist_model.pth (the model
every script uses when none is named) is replaced only by a model of its dataset that scores at
least as well on validation, unless --force says so."""

import hashlib
import sys
from pathlib import Path

import pytest

import lenetkit.config
import lenetkit.environment
import lenetkit.export
import lenetkit.modelchoice
import lenetkit.training
from lenetkit.datasets import DATASETS
from lenetkit.modelfile import read_model_file, save_model

from conftest import PROJECT_DIR, TINY_TRAINING, ctrl_c_in_epoch, run_main


@pytest.fixture
def default_model(tmp_path, monkeypatch) -> Path:
    """mnist_model.pth, the default model, moved into this test's own folder."""
    path = tmp_path / "project" / "mnist_model.pth"
    path.parent.mkdir()
    for module in (lenetkit.environment, lenetkit.config, lenetkit.export, lenetkit.modelchoice):
        monkeypatch.setattr(module, "DEFAULT_MODEL_PATH", path)
    return path


def variant(source: Path, out: Path, dataset: str | None = None,
            val_accuracy: float | None = None) -> Path:
    """A copy of the model in `source` said to be of `dataset`, or to have scored
    `val_accuracy` on validation."""
    record = read_model_file(source)
    if dataset:
        record.update(dataset=dataset, classes=list(DATASETS[dataset].classes))
    if val_accuracy is not None:
        record["metadata"]["val_accuracy"] = val_accuracy
    save_model(record, out)
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_predicting_names_the_model_file_on_stderr(tiny_model):
    result = run_main("load_model.py", PROJECT_DIR / "examples" / "seven.png", "--model",
                      tiny_model)
    assert result.stderr.startswith(f"model: {tiny_model} (mnist, lenet, validation ")
    assert result.stderr.count("\n") == 1 and "model:" not in result.stdout


def test_a_checkpoint_of_another_dataset_does_not_replace_the_default_model(
        tiny_model, default_model, tmp_path):
    variant(tiny_model, default_model)
    fashion = variant(tiny_model, tmp_path / "fashion.pth", dataset="fashion-mnist")
    before = digest(default_model)
    result = run_main("save_model.py", fashion, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "holds a mnist model; this one is fashion-mnist" in result.stderr
    assert "give --out FILE to write it elsewhere, or --force to replace it" in result.stderr
    assert digest(default_model) == before
    run_main("save_model.py", fashion, "--force")
    assert read_model_file(default_model)["dataset"] == "fashion-mnist"


def test_without_a_default_model_one_of_another_dataset_does_not_displace_the_shipped_one(
        tiny_model, default_model, tmp_path):
    """Every script answers with the shipped MNIST model until mnist_model.pth exists: a
    Fashion-MNIST model written there would answer "Ankle boot" for a photographed digit."""
    fashion = variant(tiny_model, tmp_path / "fashion.pth", dataset="fashion-mnist")
    result = run_main("save_model.py", fashion, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert (f"{default_model} is not there, so every script uses the shipped mnist model; this "
            "one is fashion-mnist: give --out FILE to write it elsewhere") in result.stderr
    assert not default_model.exists()
    run_main("save_model.py", fashion, "--force")
    assert read_model_file(default_model)["dataset"] == "fashion-mnist"


def test_a_forced_run_in_the_shipped_models_place_resumes_without_force(
        tiny_model, tiny_data, default_model, tmp_path, monkeypatch):
    """Ctrl-C says `--resume --out mnist_model.pth`; that command carries on, although the run
    (an MNIST one, beside a shipped model of another dataset here) needed --force to start."""
    shipped = variant(tiny_model, tmp_path / "shipped.pth", dataset="fashion-mnist")
    monkeypatch.setattr(lenetkit.modelchoice, "PRETRAINED_MODEL_PATH", shipped)
    settings = ["--data-dir", str(tiny_data), "--epochs", "2", *TINY_TRAINING]
    refused = run_main("train.py", *settings, "--out", default_model, check=False)
    assert refused.returncode == 1 and "is not there, so every script uses" in refused.stderr
    with monkeypatch.context() as interrupt:
        ctrl_c_in_epoch(interrupt, 2)
        interrupt.setattr(sys, "argv", ["train.py", *settings, "--force", "--out",
                                         str(default_model)])
        with pytest.raises(KeyboardInterrupt):
            lenetkit.training.main()
    result = run_main("train.py", "--resume", "--data-dir", tiny_data, "--out", default_model,
                      "--no-download")
    assert "resuming" in result.stdout and read_model_file(default_model)["dataset"] == "mnist"


def test_only_a_model_that_scores_at_least_as_well_replaces_the_default_model(
        tiny_model, default_model, tmp_path):
    variant(tiny_model, default_model, val_accuracy=0.9)
    worse = variant(tiny_model, tmp_path / "worse.pth", val_accuracy=0.5)
    result = run_main("save_model.py", worse, check=False)
    assert result.returncode == 1
    assert "scored better on validation: 90.00%, this one 50.00%" in result.stderr
    run_main("save_model.py", variant(tiny_model, tmp_path / "better.pth", val_accuracy=0.95))
    assert read_model_file(default_model)["metadata"]["val_accuracy"] == 0.95
    # Any other file is the user's to name: it is replaced as asked.
    other = variant(tiny_model, tmp_path / "other.pth", val_accuracy=0.99)
    run_main("save_model.py", worse, "--out", other)
    assert read_model_file(other)["metadata"]["val_accuracy"] == 0.5


def test_a_quick_run_beside_a_better_default_model_keeps_it_and_its_record(
        tiny_data, tiny_model, default_model):
    """The run writes its own files under the next free name; the kept model's checkpoint,
    metrics and curves stay as they were."""
    variant(tiny_model, default_model, val_accuracy=1.0)
    record = {default_model.with_suffix(suffix): b"the kept run's " + suffix.encode()
              for suffix in (".ckpt", ".metrics.json", ".curves.png")}
    for path, content in record.items():
        path.write_bytes(content)
    before = digest(default_model)
    result = run_main("train.py", "--data-dir", tiny_data, "--epochs", "1", *TINY_TRAINING)
    assert digest(default_model) == before
    assert all(path.read_bytes() == content for path, content in record.items())
    run = default_model.with_name("mnist_model-2.pth")
    assert f"saved to {run}" in result.stdout and "so it stays" in result.stderr
    assert sorted(path.name for path in run.parent.glob("mnist_model-2.*")) == [
        "mnist_model-2.ckpt", "mnist_model-2.curves.png", "mnist_model-2.metrics.json",
        "mnist_model-2.pth"]


def test_a_run_that_scores_at_least_as_well_also_becomes_the_default_model(
        tiny_data, tiny_model, default_model):
    variant(tiny_model, default_model, val_accuracy=0.0)
    result = run_main("train.py", "--data-dir", tiny_data, "--epochs", "1", *TINY_TRAINING)
    run = default_model.with_name("mnist_model-2.pth")
    assert f"and to {default_model}, the default model" in result.stdout
    assert digest(default_model) == digest(run)


def test_a_run_of_another_dataset_is_refused_before_it_trains(tiny_model, default_model,
                                                              tmp_path):
    variant(tiny_model, default_model)
    (tmp_path / "FashionMNIST").mkdir()  # no files: the run would fail later, at reading them
    result = run_main("train.py", "--dataset", "fashion-mnist", "--data-dir", tmp_path,
                      "--no-download", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "holds a mnist model; this one is fashion-mnist" in result.stderr


@pytest.mark.parametrize("name", ["run.ckpt", "model.pth"])
def test_save_model_never_writes_over_its_source(tiny_model, tmp_path, name):
    source = tmp_path / name
    source.write_bytes(tiny_model.with_suffix(Path(name).suffix).read_bytes())
    before = digest(source)
    result = run_main("save_model.py", source, "--out", source, check=False)
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert "is the source file: writing it would destroy it" in result.stderr
    assert digest(source) == before


def test_the_name_of_out_says_the_format_and_a_mismatch_is_refused(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "model.onnx"
    run_main("save_model.py", tiny_model, "--out", onnx)
    assert "onnx" in read_model_file(onnx)
    for arguments in (["--format", "onnx", "--out", tmp_path / "m.pth"],
                      ["--format", "pth", "--out", tmp_path / "m.onnx"],
                      ["--format", "onnx", "--out", tmp_path / "m.int8.onnx"],
                      ["--out", tmp_path / "model.txt"]):
        result = run_main("save_model.py", tiny_model, *arguments, check=False)
        assert result.returncode == 2 and "give --out a name that says its format" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("shipped_score, noted", [(0.99, True), (0.2, False)])
def test_a_default_model_far_under_the_shipped_one_says_that_every_script_now_uses_it(
        tiny_model, tiny_data, default_model, tmp_path, monkeypatch, shipped_score, noted):
    """A quick check written as mnist_model.pth takes the shipped model's place everywhere."""
    shipped = variant(tiny_model, tmp_path / "shipped.pth", val_accuracy=shipped_score)
    monkeypatch.setattr(lenetkit.modelchoice, "PRETRAINED_MODEL_PATH", shipped)
    result = run_main("train.py", "--data-dir", tiny_data, "--epochs", "1", "--out",
                      default_model, *TINY_TRAINING)
    score = read_model_file(default_model)["metadata"]["val_accuracy"]
    note = (f"note: {default_model} (validation {score:.2%}) is now the model every script uses, "
            "in place of the shipped one (99.00%); delete or rename it to go back")
    assert (note in result.stderr.splitlines()) is noted


def test_a_default_model_without_the_shipped_ones_digit_score_says_what_it_gives_up(
        tiny_model, tiny_data, default_model, tmp_path, monkeypatch):
    """make train's default recipe trains no detector: its model answers a digit for a letter."""
    shipped = variant(tiny_model, tmp_path / "shipped.pth", val_accuracy=0.2)
    record = read_model_file(shipped)
    record["digit_score"] = {"score": "msp", "threshold": 0.5, "scale": 0.1}
    save_model(record, shipped)
    monkeypatch.setattr(lenetkit.modelchoice, "PRETRAINED_MODEL_PATH", shipped)
    result = run_main("train.py", "--data-dir", tiny_data, "--epochs", "1", "--out",
                      default_model, *TINY_TRAINING)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {default_model} (validation ")
    assert notes[0].endswith(
        "is now the model every script uses, in place of the shipped one; unlike it, it has no "
        "digit score, so it answers a digit for anything it is shown (a letter, a scribble): "
        "configs/robust.json trains one that has; delete or rename it to go back")
