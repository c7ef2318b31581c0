"""The scripts end to end, run as a user runs them, on a tiny dataset the tests write: their
mains in this process (conftest.run_main), and as processes where the process is what is tested
(that each script starts, the benchmarks, what start-up imports)."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import lenetkit.config
import lenetkit.training
from lenetkit.modelfile import read_model_file
from lenetkit.prediction import load_model

from conftest import (
    PROJECT_DIR,
    REAL_DATA_DIR,
    TINY_TRAINING,
    ctrl_c_in_epoch,
    finished,
    needs_real_mnist,
    run_main,
    run_scripts,
    start_script,
)


@pytest.mark.slow
def test_every_script_explains_itself_with_defaults():
    """Each script that no other test starts as a process, started so, all at once: that the
    script itself starts and exits with 0 (train.py, evaluate.py and serve.py start elsewhere;
    test_help.py reads every script's help in this process)."""
    scripts = ["save_model.py", "load_model.py", "tune.py", "tools/bench.py"]
    for script, result in zip(scripts, run_scripts(*([script, "--help"] for script in scripts))):
        assert "usage:" in result.stdout and "(default:" in result.stdout, script


def test_training_writes_the_model_checkpoint_metrics_and_curves(tiny_model):
    for suffix in (".pth", ".ckpt", ".metrics.json", ".curves.png"):
        assert tiny_model.with_suffix(suffix).is_file(), suffix
    metrics = json.loads(tiny_model.with_suffix(".metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert 0 <= metrics["test"]["accuracy"] <= 1
    metadata = read_model_file(tiny_model)["metadata"]
    assert metadata["epochs"] == 2 and metadata["best_epoch"] in (1, 2)
    assert metadata["command"].startswith("train.py --data-dir")
    assert metadata["val_accuracy"] == max(row["val_accuracy"] for row in metrics["history"])


@pytest.fixture(scope="module")
def all_images_run(tiny_data, tmp_path_factory) -> tuple:
    """A model trained with --val-size 0 on all 600 tiny training images for 3 epochs, with a
    weight average (EMA), and what train.py printed."""
    out = tmp_path_factory.mktemp("all_images") / "model.pth"
    result = run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "3",
                      "--ema", "0.9", *TINY_TRAINING, "--val-size", "0")
    return out, result.stdout


def test_val_size_0_trains_on_every_image_and_keeps_the_last_epoch(all_images_run):
    out, printed = all_images_run
    assert "600 training and 0 validation images" in printed
    epochs = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("no validation *" in line for line in epochs)
    assert f"last epoch 3 (no validation) saved to {out}" in printed
    record = read_model_file(out)
    assert (record["metadata"]["val_size"], record["metadata"]["best_epoch"]) == (0, 3)
    assert "val_accuracy" not in record["metadata"] and "val_loss" not in record["metadata"]
    average = torch.load(out.with_suffix(".ckpt"), weights_only=True)["ema"]  # after epoch 3
    for name, tensor in record["state_dict"].items():
        assert torch.equal(tensor, average[f"module.{name}"]), name
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["val_accuracy"] is None and metrics["best_epoch"] == 3
    assert all(not any("val" in key for key in row) for row in metrics["history"])
    assert metrics["test"]["accuracy"] > 0.5 and out.with_suffix(".curves.png").is_file()


def test_a_model_without_validation_says_so_when_saved_and_has_no_split_to_score(
        all_images_run, tiny_model, tiny_data, tmp_path):
    out, _ = all_images_run
    saved = run_main("save_model.py", out, "--out", tmp_path / "lean.pth")
    assert "no validation, kept epoch 3 of 3" in saved.stdout
    for models in ([out], [tiny_model, out]):
        scored = run_main("evaluate.py", "--model", *models, "--data-dir", tiny_data,
                          "--split", "val", "--out-dir", tmp_path, "--no-download", check=False)
        assert scored.returncode == 1
        assert scored.stderr == (f"error: {out} was trained on every training image "
                                 "(--val-size 0): it has no validation split to score\n")


@pytest.fixture(scope="module")
def other_model(tiny_data, tmp_path_factory) -> Path:
    """A second tiny model beside tiny_model: another seed, one epoch, 50 images held out."""
    out = tmp_path_factory.mktemp("other") / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", "--seed", "5",
             *TINY_TRAINING, "--val-size", "50")
    return out


def test_models_that_held_out_splits_of_different_sizes_are_scored_on_the_smallest(
        tiny_model, other_model, tiny_data, tmp_path):
    other = other_model
    scored = run_main("evaluate.py", "--model", tiny_model, other, "--data-dir", tiny_data,
                      "--split", "val", "--out-dir", tmp_path, "--no-download", "--json")
    assert [report["images"] for report in json.loads(scored.stdout)["models"]] == [50, 50]
    alone = run_main("evaluate.py", "--model", tiny_model, "--data-dir", tiny_data,
                     "--split", "val", "--out-dir", tmp_path, "--no-download", "--json")
    assert [report["images"] for report in json.loads(alone.stdout)["models"]] == [100]


def test_training_learns_the_tiny_task(tiny_model):
    history = json.loads(tiny_model.with_suffix(".metrics.json").read_text())["history"]
    assert history[-1]["val_accuracy"] > 0.5  # chance is 0.1


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics_run_after_run(tiny_data, tmp_path):
    """One run in a fresh process, one in this process after the other tests' runs (while the
    first starts): neither the process (its hash seed, its start) nor what ran before in it
    changes the run."""
    settings = ["--data-dir", tiny_data, "--epochs", "2", "--seed", "7", *TINY_TRAINING]
    first = start_script("train.py", *settings, "--out", tmp_path / "first" / "model.pth")
    run_main("train.py", *settings, "--out", tmp_path / "second" / "model.pth")
    finished(first)
    runs = []
    for name in ("first", "second"):
        history = json.loads((tmp_path / name / "model.metrics.json").read_text())["history"]
        runs.append([{key: value for key, value in row.items() if key != "seconds"}
                     for row in history])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("held_out", [[], ["--val-size", "0"]],
                         ids=["validated", "nothing-held-out"])
def test_resuming_after_ctrl_c_ends_with_the_same_weights_as_an_uninterrupted_run(
        tiny_data, tmp_path, monkeypatch, held_out):
    settings = ["--data-dir", str(tiny_data), "--epochs", "3", "--seed", "3", *TINY_TRAINING,
                *held_out]
    uninterrupted = tmp_path / "whole" / "model.pth"
    run_main("train.py", *settings, "--out", uninterrupted)

    interrupted = tmp_path / "interrupted" / "model.pth"
    with monkeypatch.context() as interrupt:
        ctrl_c_in_epoch(interrupt, 2)
        interrupt.setattr(sys, "argv", ["train.py", *settings, "--out", str(interrupted)])
        with pytest.raises(KeyboardInterrupt):
            lenetkit.training.main()
    checkpoint = torch.load(interrupted.with_suffix(".ckpt"), weights_only=True)
    assert checkpoint["history"][-1]["epoch"] == 1
    assert not interrupted.exists()

    result = run_main("train.py", "--resume", "--data-dir", tiny_data, "--out", interrupted,
                      "--no-download")
    assert "resuming" in result.stdout
    expected, resumed = read_model_file(uninterrupted), read_model_file(interrupted)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    history = lambda path: [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in json.loads(path.with_suffix(".metrics.json").read_text())["history"]]
    assert history(uninterrupted) == history(interrupted)


def test_resume_refuses_a_setting_that_contradicts_the_checkpoint(tiny_model, tiny_data):
    result = run_main("train.py", "--resume", "--lr", "0.5", "--data-dir", tiny_data, "--out",
                      tiny_model, "--no-download", check=False)
    assert result.returncode == 1
    assert "--lr 0.5 differs from the checkpoint's" in result.stderr


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    result = run_main("train.py", "--resume", "--data-dir", tiny_data, "--out", tmp_path / "m.pth",
                      check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: no file at")
    assert "Traceback" not in result.stderr


def test_a_dry_run_trains_a_few_batches_and_writes_nothing(tiny_data, tmp_path):
    result = run_main("train.py", "--dry-run", "--data-dir", tiny_data, "--out", tmp_path / "m.pth",
                      *TINY_TRAINING)
    assert "nothing written" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_compiled_model_trains_and_saves_plain_weights(tiny_data, tmp_path, monkeypatch):
    """torch.compile wraps the model (its names gain `_orig_mod.`), whichever backend compiles it;
    aot_eager traces forward and backward as inductor does, without building C++ kernels, which
    would make this the suite's slowest test."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", "--compile",
             *TINY_TRAINING)
    record = read_model_file(out)
    assert not any(name.startswith("_orig_mod.") for name in record["state_dict"])
    assert load_model(out)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def output_dtypes(monkeypatch) -> set[torch.dtype]:
    """The dtypes the network of train.py's next run gives out, in training and validation."""
    seen, setup_training = set(), lenetkit.training.setup_training

    def spied(*args, **kwargs):
        training = setup_training(*args, **kwargs)
        training.model.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        return training

    monkeypatch.setattr(lenetkit.training, "setup_training", spied)
    return seen


@pytest.mark.parametrize("native", [True, False])
def test_amp_trains_in_bf16_where_the_cpu_has_it_and_in_float32_with_a_note_where_not(
        tiny_data, tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(lenetkit.training, "has_native_bf16", lambda device: native)
    dtypes, out = output_dtypes(monkeypatch), tmp_path / "model.pth"
    lenetkit.training.train(*lenetkit.config.parse_args([
        "--data-dir", str(tiny_data), "--out", str(out), "--epochs", "1", "--amp", *TINY_TRAINING]))
    assert dtypes == {torch.bfloat16 if native else torch.float32}
    metadata = read_model_file(out)["metadata"]
    assert metadata["amp"] is True and metadata["bf16"] is native  # what was asked, what ran
    assert ("no bf16 instructions" in capsys.readouterr().out) is not native


def test_a_gpu_without_bf16_is_named_as_a_gpu_in_the_note(monkeypatch):
    monkeypatch.setattr(lenetkit.training, "has_native_bf16", lambda device: False)
    config = lenetkit.training.TrainConfig(amp=True)
    training, notes = lenetkit.training.setup_training(config, 1, torch.device("cpu")), []
    lenetkit.training.drop_emulated_bf16(training, torch.device("cuda"), notes.append)
    assert not training.amp
    assert notes == ["note: this GPU has no bf16 instructions (Ampere or later), where bf16 "
                     "autocast is slower than float32: training in float32"]


def test_a_recipe_with_amp_resumes_on_a_cpu_without_bf16_and_no_amp_beside_it_turns_it_off(
        tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lenetkit.training, "has_native_bf16", lambda device: False)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"epochs": 2, "amp": True}))
    settings = ["--config", str(recipe), "--data-dir", str(tiny_data), *TINY_TRAINING]
    out = tmp_path / "resumed" / "model.pth"
    with monkeypatch.context() as interrupt:
        ctrl_c_in_epoch(interrupt, 2)
        with pytest.raises(KeyboardInterrupt):
            lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--out", str(out)]))
    # the same command
    lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--resume", "--out", str(out)]))
    assert read_model_file(out)["metadata"]["epochs"] == 2
    plain = tmp_path / "plain" / "model.pth"
    lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--no-amp", "--out",
                                                         str(plain)]))
    assert read_model_file(plain)["metadata"]["amp"] is False


@pytest.mark.parametrize("arch, augment_flags, augmentation", [
    ("convnet", ["--augment"], "affine"),  # --augment alone: what suits digits
    ("resnet", ["--augment", "shift"], "shift"),
    ("widenet", ["--augment", "erase"], "erase"),
    ("twoconv", ["--augment", "shift"], "shift"),
    ("fastnet", ["--augment", "affine"], "affine"),
])
def test_the_stronger_models_train_with_augmentation_and_label_smoothing_at_any_width(
        tiny_data, tmp_path, arch, augment_flags, augmentation):
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "2", "--arch", arch,
             *augment_flags, "--label-smoothing", "0.1", "--width", "16", *TINY_TRAINING)
    record = read_model_file(out)
    assert record["arch"] == arch and record["metadata"]["augment"] == augmentation
    assert record["metadata"]["label_smoothing"] == 0.1
    assert record["model_args"]["width"] == 16 and record["metadata"]["width"] == 16
    # rebuilt at its width from the file alone
    assert load_model(out)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    history = json.loads(out.with_suffix(".metrics.json").read_text())["history"]
    # learning the tiny task through the distortions (chance: 0.1)
    assert history[-1]["val_accuracy"] > 0.3


def test_a_width_for_the_lenet_is_refused_in_one_line():
    result = run_main("train.py", "--width", "48", "--dry-run", check=False)
    assert result.returncode == 2
    assert ("the lenet has none (architectures with a width: convnet, resnet, widenet, twoconv, "
            "fastnet, cifarnet)") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_quick_benchmark_runs_and_writes_its_table(tiny_data, tmp_path):
    result = run_main("tools/bench.py", "--quick", "--data-dir", tiny_data, "--out",
                      tmp_path / "bench.json")
    assert "training throughput" in result.stdout and "time to 99.0% test accuracy" in result.stdout
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [row["batch_size"] for row in bench["throughput"]] == [64, 256]
    assert all(row[key] > 0 for row in bench["throughput"]
               for key in ("conventional", "tensors", "shipped"))
    assert {(row["batch_size"], row["threads"]) for row in bench["scaling"]} == {
        (batch, threads) for batch in (64, 128, 256, 512, 1024) for threads in (1, 2)}
    assert bench["training_run"]["peak_rss_mib"] > 0 and bench["latency"]["calls"] == 20
    assert bench["evaluation"]["images"] == 200


def test_a_quick_benchmark_never_overwrites_the_committed_full_run_in_bench_json(tmp_path):
    import bench

    assert bench.results_path(None, quick=True) == PROJECT_DIR / "runs" / "bench-quick.json"
    assert bench.results_path(None, quick=False) == PROJECT_DIR / "tools" / "bench.json"
    assert bench.results_path(tmp_path / "mine.json", quick=True) == tmp_path / "mine.json"
    assert "/runs/" in (PROJECT_DIR / ".gitignore").read_text().splitlines()  # git ignores it there


def test_evaluate_reports_accuracy_per_class_scores_and_confusion_as_json(tiny_model, tiny_data,
                                                                          tmp_path):
    result = run_main("evaluate.py", "--model", tiny_model, "--data-dir", tiny_data, "--out-dir",
                      tmp_path, "--no-download", "--json")
    [report] = json.loads(result.stdout)["models"]
    assert report["images"] == 200 and len(report["per_class"]) == 10
    confusion = torch.tensor(report["confusion"])
    assert confusion.sum() == 200
    assert report["errors"] == 200 - confusion.trace()
    assert report["accuracy"] == pytest.approx(confusion.trace().item() / 200)
    assert (tmp_path / "model.confusion.png").is_file()
    assert (tmp_path / "model.errors.png").is_file()


def test_evaluate_prints_a_readable_report(tiny_model, tiny_data, tmp_path):
    result = run_main("evaluate.py", "--model", tiny_model, "--data-dir", tiny_data, "--out-dir",
                      tmp_path, "--no-download")
    assert "accuracy" in result.stdout and "precision" in result.stdout
    assert "confusion matrix" in result.stdout


def test_evaluate_scores_several_models_their_spread_and_their_ensemble(tiny_model, other_model,
                                                                        tiny_data, tmp_path):
    other = other_model
    result = json.loads(run_main("evaluate.py", "--model", tiny_model, other, "--data-dir",
                                 tiny_data, "--out-dir", tmp_path / "figures", "--no-download",
                                 "--json").stdout)
    accuracies = [report["accuracy"] for report in result["models"]]
    assert result["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    assert result["accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
    assert result["ensemble"]["images"] == 200
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == [
        "ensemble.confusion.png", "ensemble.errors.png", "model-0.confusion.png",
        "model-0.errors.png", "model-1.confusion.png", "model-1.errors.png"]


def test_save_model_turns_a_checkpoint_into_the_lean_model_file(tiny_model, tmp_path):
    lean = tmp_path / "lean.pth"
    result = run_main("save_model.py", tiny_model.with_suffix(".ckpt"), "--out", lean)
    assert "wrote" in result.stdout
    assert lean.stat().st_size < tiny_model.with_suffix(".ckpt").stat().st_size
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(load_model(lean)(images), load_model(tiny_model)(images))


def test_load_model_predicts_image_files_and_reports_bad_ones_without_stopping(tiny_model,
                                                                              tmp_path):
    bar = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(bar).rectangle((40, 120, 240, 140), fill=0)
    bar.save(tmp_path / "bar.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = run_main("load_model.py", "--model", tiny_model, "--top-k", "3",
                      tmp_path / "broken.png", tmp_path / "bar.png", check=False)
    assert result.returncode == 1
    assert "broken.png: error: not a readable image" in result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{tmp_path / 'bar.png'}: ") and line.count("%") == 3


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "-5"),
                                         ("--lr", "fast"), ("--lr", "0"), ("--lr", "nan"),
                                         ("--weight-decay", "-0.1"), ("--val-size", "-1")])
def test_bad_arguments_stop_before_any_work_with_status_2(flag, value, tmp_path):
    result = run_main("train.py", flag, value, "--out", tmp_path / "m.pth", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"train.py: error: argument {flag}")
    assert list(tmp_path.iterdir()) == []


def test_missing_data_is_one_line_naming_the_files_not_a_traceback(tmp_path):
    result = run_main("train.py", "--data-dir", tmp_path, "--out", tmp_path / "m.pth",
                      "--no-download", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: MNIST files missing in")
    assert "train-images-idx3-ubyte" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_damaged_model_file_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    result = run_main("load_model.py", "--model", tmp_path / "bad.pth", "digit.png", check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tiny_data, tmp_path):
    (tmp_path / "a_file").write_text("")
    for script, args in (
            ("train.py", ["--data-dir", tiny_data, "--out", tmp_path / "a_file" / "m.pth"]),
            ("save_model.py", [tmp_path / "m.ckpt", "--out", tmp_path / "a_file" / "m.pth"])):
        result = run_main(script, *args, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].endswith(
            f"{tmp_path / 'a_file'} is not a folder")


def test_a_missing_data_folder_without_download_is_refused_before_any_work(tmp_path):
    result = run_main("train.py", "--data-dir", tmp_path / "nowhere", "--no-download", "--out",
                      tmp_path / "m.pth", check=False)
    assert result.returncode == 2 and "nowhere is not a folder" in result.stderr


@pytest.mark.slow
def test_the_quick_time_to_accuracy_bench_times_the_three_recipes(tiny_data, tmp_path):
    out = tmp_path / "time.json"
    run_main("tools/bench.py", "--time-to-accuracy", "--quick", "--data-dir", tiny_data,
             "--out", out)
    results = json.loads(out.read_text())
    assert set(results) == {"fast (configs/fast.json)", "default (train.py)", "pytorch/examples"}
    for curve in (result["curve"] for result in results.values()):
        assert curve and all(0 <= point["test_accuracy"] <= 1 for point in curve)


@pytest.mark.slow
def test_profile_recipe_reports_flops_rates_layouts_and_the_top_operators(tiny_data):
    result = run_main("tools/profile_recipe.py", "--config",
                      PROJECT_DIR / "configs" / "fast.json", "--data-dir", tiny_data,
                      "--batch-size", "50", "--steps", "2", "--top", "3", "--no-download")
    assert "MFLOP an image" in result.stdout and "matmul 2048 fp32" in result.stdout
    for setting in ("fp32           NCHW", "fp32           channels_last", "bf16 autocast  NCHW"):
        assert setting in result.stdout
    assert "top operators" in result.stdout and "aten::" in result.stdout
    too_many = run_main("tools/profile_recipe.py", "--data-dir", tiny_data, "--steps", "100",
                        "--no-download", check=False)
    assert too_many.returncode == 1 and "need 26,112 training images" in too_many.stderr


def imports_torchvision(code: str, *args) -> tuple[list[str], bool]:
    """What `code` prints, run in a fresh Python in the project's folder, and whether it imported
    torchvision (this process has: the tests use it)."""
    code += "; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", f"import sys; {code}", *map(str, args)],
                            cwd=PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    *printed, imported = result.stdout.split()
    return printed, imported == "True"


@pytest.mark.slow
def test_predicting_and_importing_the_scripts_leave_torchvision_unimported():
    """Importing torchvision imports all of its models, a wait at every start; only downloads
    need it, so the scripts import it then."""
    code = ("import evaluate, load_model, save_model, serve, train, tune; "
            "print(load_model.predict('examples/seven.png').name)")
    assert imports_torchvision(code) == (["7"], False)


@pytest.mark.slow
@needs_real_mnist
def test_reading_the_real_files_and_checking_their_gz_leave_torchvision_unimported():
    code = ("from lenetkit import datasets; "
            "print(len(datasets.load_dataset(sys.argv[1], train=False)[0]))")
    assert imports_torchvision(code, REAL_DATA_DIR) == (["10000"], False)
