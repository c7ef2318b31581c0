"""Command lines and recipes: what they may set, what is refused up front, and how --help reads."""

import json

import pytest

import lenetkit.config
import lenetkit.training

from conftest import (
    PROJECT_DIR,
    TINY_TRAINING,
    ctrl_c_in_epoch,
    run_main,
    write_cifar10,
    write_mnist,
)

SCRIPTS = ("train.py", "evaluate.py", "load_model.py", "save_model.py", "tune.py", "tools/bench.py",
           "serve.py", "tools/bench_serve.py", "tools/profile_recipe.py", "tools/examples_mnist.py")


def refused(script: str, *args: str) -> str:
    """The one-line complaint of a command that must fail before doing any work."""
    result = run_main(script, *args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["--out=/tmp/elsewhere.pth", "--data-dir=/", "--resume"])
def test_a_recipe_value_can_never_become_a_flag(tmp_path, value):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"epochs": 1, "augment": value}))
    assert "unknown augmentation" in refused("train.py", "--config", recipe, "--dry-run")


@pytest.mark.parametrize("content", [{"out": "x.pth"}, {"data_dir": "/"}, {"resume": True},
                                     {"config": "a"}])
def test_a_recipe_can_only_set_settings_never_paths_or_actions(tmp_path, content):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(content))
    assert "unknown settings" in refused("train.py", "--config", recipe, "--dry-run")


@pytest.mark.parametrize("content, complaint", [
    ({"epochs": False}, "epochs must be a number or a string"),
    ({"amp": "yes"}, "amp must be true or false"),
    ({"lr": [0.1]}, "lr must be a number or a string"),
    ({"arch": "transformer"}, "arch must be one of"),
    ({"label_smoothing": 2}, "must be below 1"),
    # a recipe from elsewhere can't ask to train (nearly) forever
    ({"epochs": 10**26}, "epochs must be a whole number from 1 to 10,000"),
    ({"detector_epochs": 10**6}, "detector_epochs must be a whole number from 0 to 10,000"),
])
def test_a_recipe_value_of_the_wrong_type_or_range_is_refused(tmp_path, content, complaint):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(content))
    assert complaint in refused("train.py", "--config", recipe, "--dry-run")


def test_a_recipe_saved_with_a_byte_order_mark_is_read(tmp_path):
    """As Windows' Notepad saves it."""
    recipe, with_mark = PROJECT_DIR / "configs" / "fast.json", tmp_path / "fast.json"
    with_mark.write_bytes(b"\xef\xbb\xbf" + recipe.read_bytes())
    config, _ = lenetkit.config.parse_args(["--config", str(with_mark)])
    assert config == lenetkit.config.parse_args(["--config", str(recipe)])[0]


@pytest.mark.parametrize("flags, complaint", [
    (["--label-smoothing", "2"], "must be below 1"),
    (["--seed", str(2**64)], "must be a whole number from 0 to"),
    (["--seed", "-1"], "must be a whole number from 0 to"),
    (["--arch", "convnet", "--width", "1"], "must be a whole number from 4 to 128"),
    (["--arch", "resnet", "--width", "129"], "must be a whole number from 4 to 128"),
    (["--arch", "convnet", "--width", "100000"], "must be a whole number from 4 to 128"),
    (["--out", "run.ckpt"], "is the name of a file written beside the model"),
    (["--out", "model.onnx"], "a model file's name ends with .pth or .pt"),
])
def test_arguments_that_could_only_fail_later_are_refused_before_any_work(tmp_path, flags,
                                                                           complaint):
    assert complaint in refused("train.py", *flags, "--data-dir", tmp_path, "--dry-run")


def test_evaluate_refuses_a_negative_number_of_errors_shown(tmp_path):
    assert "argument --errors-shown: must be a whole number >= 0, got -5" in refused(
        "evaluate.py", "--errors-shown", "-5", "--data-dir", tmp_path)


@pytest.mark.parametrize("dataset, write, broken", [
    ("mnist", write_mnist, "MNIST/raw/t10k-labels-idx1-ubyte"),
    ("cifar10", write_cifar10, "cifar-10-batches-bin/test_batch.bin"),
])
def test_a_missing_or_corrupt_test_file_stops_training_before_it_trains(tmp_path, dataset, write,
                                                                       broken):
    write(tmp_path / "data")
    out = tmp_path / "model.pth"
    for damage in ("corrupt", "missing"):
        test_file = tmp_path / "data" / broken
        if damage == "corrupt":
            test_file.write_bytes(test_file.read_bytes()[:-1])
        else:
            test_file.unlink()
        result = run_main("train.py", "--dataset", dataset, "--data-dir", tmp_path / "data",
                          "--out", out, "--epochs", "1", *TINY_TRAINING, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert test_file.name in result.stderr.splitlines()[-1]
        assert "epoch" not in result.stdout and not out.exists()  # nothing was trained


def test_resume_refuses_a_flag_that_differs_from_the_checkpoint_even_when_it_equals_the_default(
        tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "model.pth"
    settings = ["--data-dir", str(tiny_data), "--epochs", "3", "--lr", "0.003", *TINY_TRAINING]
    ctrl_c_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--arch", "convnet",
                                                             "--out", str(out)]))
    defaults = lenetkit.config.build_parser()
    for flag in ("--arch", "--lr", "--epochs"):
        value = str(defaults.get_default(flag[2:]))
        complaint = refused("train.py", "--resume", flag, value, "--out", out, "--data-dir",
                            tiny_data)
        assert f"{flag} {value} differs from the checkpoint's" in complaint


def test_resume_with_flags_equal_to_the_checkpoints_goes_on(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "model.pth"
    settings = ["--data-dir", str(tiny_data), "--epochs", "2", "--lr", "0.01", *TINY_TRAINING]
    with monkeypatch.context() as interrupt:
        ctrl_c_in_epoch(interrupt, 2)
        with pytest.raises(KeyboardInterrupt):
            lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--out", str(out)]))
    result = run_main("train.py", "--resume", *settings, "--out", out)
    assert "resuming" in result.stdout and out.is_file()


def test_ctrl_c_before_the_first_epoch_never_offers_an_earlier_runs_checkpoint(tiny_data, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", *TINY_TRAINING)
    assert out.with_suffix(".ckpt").is_file()  # the earlier run's
    ctrl_c_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt) as interrupt:
        lenetkit.training.train(*lenetkit.config.parse_args(["--data-dir", str(tiny_data),
                                                             "--out", str(out), *TINY_TRAINING]))
    assert "no epoch was finished" in str(interrupt.value)
    assert "--resume" not in str(interrupt.value)


def test_no_flag_can_be_abbreviated_so_tune_never_mistakes_seed_for_another_flag(tmp_path):
    assert "unrecognized arguments: --see" in refused("train.py", "--see", "3", "--dry-run")
    assert "unrecognized arguments: --ep" in refused("tune.py", "--ep", "3", "--out-dir", tmp_path)


def test_tune_takes_its_seeds_with_the_same_flag_as_train_and_refuses_a_dry_run(tmp_path):
    import lenetkit.tuning

    args, config, _ = lenetkit.tuning.parse_args(["--seed", "3", "4", "--lr", "0.02", "--out-dir",
                                       str(tmp_path), "--arch", "convnet"])
    assert args.seeds == [3, 4] and args.lr == [0.02] and config.arch == "convnet"
    assert "not for a sweep" in refused("tune.py", "--dry-run", "--out-dir", tmp_path)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_each_default_once_and_readably(script):
    text = run_main(script, "--help").stdout
    assert "usage:" in text
    for line in text.splitlines():
        assert line.count("(default:") <= 1, line
    assert "(default: None)" not in text and "PosixPath" not in text
    assert str(PROJECT_DIR) not in text


def test_train_help_groups_its_flags_by_concern():
    text = run_main("train.py", "--help").stdout
    for group in ("data:", "model:", "optimisation:", "augmentation:", "speed:", "output:"):
        assert f"\n{group}\n" in text
