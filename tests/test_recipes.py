"""Recipes: --config files, the weight average (--ema), test-time augmentation and tune.py's
sweep."""

import json
from dataclasses import asdict

import pytest
import torch

import lenetkit.config
import lenetkit.training
import lenetkit.tuning
from lenetkit.datasets import DATASETS
from lenetkit.evaluation import evaluate, learned_mirrors, tta_views
from lenetkit.model import LeNet
from lenetkit.modelfile import read_model_file

from conftest import PROJECT_DIR, TINY_TRAINING, ctrl_c_in_epoch, run_main


def test_a_config_file_sets_the_run_and_flags_given_beside_it_win(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"arch": "convnet", "lr": 0.003, "augment": True, "epochs": 20}))
    config, _ = lenetkit.config.parse_args(["--config", str(recipe), "--epochs", "5"])
    assert config == lenetkit.training.TrainConfig(arch="convnet", lr=0.003, augment="affine",
                                                   epochs=5)


def test_a_config_file_with_an_unknown_or_invalid_setting_is_refused_in_one_line(tmp_path):
    for content, complaint in ([{"learning_rate": 0.1}, "unknown settings ['learning_rate']"],
                               [{"lr": -1}, "must be a positive number"],
                               ["[1, 2]", "not a JSON object"]):
        recipe = tmp_path / "recipe.json"
        recipe.write_text(content if isinstance(content, str) else json.dumps(content))
        result = run_main("train.py", "--config", recipe, "--dry-run", check=False)
        assert result.returncode == 2 and complaint in result.stderr
        assert "Traceback" not in result.stderr


def test_with_ema_the_average_is_validated_and_saved_and_the_raw_weights_are_scored_beside_it(
        tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "2", "--ema", "0.9",
             *TINY_TRAINING)
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    for row in metrics["history"]:
        assert {"val_accuracy", "raw_val_accuracy"} <= set(row)
    assert metrics["history"][-1]["val_accuracy"] > 0.5  # the average learned too (chance is 0.1)
    checkpoint = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    raw, averaged = checkpoint["state_dict"], read_model_file(out)["state_dict"]
    # the file holds the average
    assert any(not torch.equal(raw[name], averaged[name]) for name in raw)


@pytest.mark.parametrize("averaging", [
    ["--ema", "0.9"],
    # 9 steps an epoch
    ["--optimizer", "sgd", "--lr", "0.05", "--lookahead", "--batch-size", "60"]],
    ids=["ema", "sgd-lookahead"])
def test_resuming_a_run_with_ema_or_lookahead_ends_with_the_weights_of_an_uninterrupted_run(
        tiny_data, tmp_path, monkeypatch, averaging):
    settings = ["--data-dir", str(tiny_data), "--epochs", "3", "--seed", "4", *TINY_TRAINING,
                *averaging]
    whole, interrupted = tmp_path / "whole" / "model.pth", tmp_path / "interrupted" / "model.pth"
    run_main("train.py", *settings, "--out", whole)
    with monkeypatch.context() as interrupt:
        ctrl_c_in_epoch(interrupt, 2)
        with pytest.raises(KeyboardInterrupt):
            lenetkit.training.train(*lenetkit.config.parse_args([*settings, "--out",
                                                                 str(interrupted)]))
    run_main("train.py", "--resume", "--data-dir", tiny_data, "--out", interrupted,
             "--no-download")
    expected = read_model_file(whole)["state_dict"]
    resumed = read_model_file(interrupted)["state_dict"]
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name


def test_lookahead_pulls_the_weights_back_every_5_steps_harder_as_the_run_ends():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    weight, mean = model[0].weight, model[1].running_mean
    torch.nn.init.zeros_(weight)
    lookahead = lenetkit.training.Lookahead(model, total_steps=10)
    for step in range(1, 11):
        with torch.no_grad():
            weight += 1.0  # a step of the optimizer
            mean += 1.0  # and of batch norm's statistics
            model[1].num_batches_tracked += 1
        lookahead.step(step)
        if step == 5:  # decay 0.95^5 x (5/10)^3 of the way back to 0, where the run started
            assert weight.item() == mean.item() == pytest.approx(5 * (1 - 0.95 ** 5 / 8))
    pulled = 5 * (1 - 0.95 ** 5 / 8) + 5 * (1 - 0.95 ** 5)
    assert weight.item() == mean.item() == pytest.approx(pulled)
    assert model[1].num_batches_tracked.item() == 10  # a count, not averaged
    with torch.no_grad():
        weight += 1.0
    lookahead.restore()  # the end of an epoch: back to the last pull
    assert weight.item() == pytest.approx(pulled)


def test_tta_views_are_the_image_and_its_four_one_pixel_shifts():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1
    views = tta_views(image)
    assert len(views) == 5 and all(view.shape == image.shape for view in views)
    assert torch.equal(views[0], image)
    moved_to = {tuple((view[0, 0] == 1).nonzero()[0].tolist()) for view in views[1:]}
    assert moved_to == {(2, 3), (2, 1), (3, 2), (1, 2)}


def test_a_model_that_learned_from_mirror_images_is_shown_the_mirrors_of_the_five_views_too():
    image = torch.arange(25.0).view(1, 1, 5, 5)
    views = tta_views(image, mirror=True)
    assert len(views) == 10
    assert all(torch.equal(a, b) for a, b in zip(views[:5], tta_views(image)))
    assert all(torch.equal(mirrored, view.flip(-1)) for view, mirrored in zip(views[:5], views[5:]))
    assert learned_mirrors({"metadata": {"augment": "shift,flip"}})
    # Older files held booleans; a foreign file may hold anything.
    for metadata in ({"augment": "affine"}, {"augment": True}, {}, {"augment": ["flip"]}):
        assert not learned_mirrors({"metadata": metadata})


@pytest.mark.parametrize("mirror", [False, True])
def test_evaluate_with_tta_averages_probabilities_and_without_it_matches_cross_entropy(mirror):
    torch.manual_seed(0)
    model, images, labels = LeNet(), torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    plain = evaluate(model, images, labels, mirror=mirror)  # mirror alone changes nothing
    averaged = evaluate(model, images, labels, tta=True, mirror=mirror)
    assert (plain.views, averaged.views) == (1, 10 if mirror else 5)
    with torch.no_grad():
        expected_loss = torch.nn.functional.cross_entropy(model(images), labels).item()
        assert abs(plain.loss - expected_loss) < 1e-5
        views = tta_views(images, mirror)
        expected = torch.stack([model(view).softmax(1) for view in views]).mean(0)
    assert torch.allclose(averaged.probabilities, expected, atol=1e-6)


def test_tune_ranks_the_combinations_on_validation_and_writes_a_recipe_train_accepts(tiny_data,
                                                                                    tmp_path):
    out_dir = tmp_path / "sweep"
    result = run_main("tune.py", "--lr", "0.002", "0.02", "--batch-size", "50", "--epochs", "1",
                      "2", "--seed", "0", "1", "--out-dir", out_dir, "--data-dir", tiny_data,
                      "--val-size", "100", "--no-download")
    rows = json.loads((out_dir / "results.json").read_text())["rows"]
    assert len(rows) == 4 and [row["val_accuracy"] for row in rows] == sorted(
        (row["val_accuracy"] for row in rows), reverse=True)
    assert "test: loss" not in result.stdout  # the test set is never read
    assert (out_dir / "lr.png").stat().st_size > 0
    recipe = json.loads((out_dir / "best.json").read_text())
    assert (recipe["lr"], recipe["epochs"]) == (rows[0]["lr"], rows[0]["epochs"])
    assert "seed" not in recipe
    config, _ = lenetkit.config.parse_args(["--config", str(out_dir / "best.json")])
    assert (config.lr, config.batch_size, config.epochs, config.val_size) == (
        recipe["lr"], 50, recipe["epochs"], 100)
    again = run_main("tune.py", "--lr", "0.002", "--batch-size", "50", "--epochs", "1", "--seed",
                     "0", "--out-dir", out_dir, "--data-dir", tiny_data, "--val-size", "100",
                     "--no-download")
    assert "done before" in again.stdout  # a finished run is not trained again


def test_tune_refuses_val_size_0_it_has_nothing_to_score(tmp_path):
    result = run_main("tune.py", "--val-size", "0", "--out-dir", tmp_path / "sweep", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tune.py: error: a validation size of 0 holds nothing out, and tune.py scores by "
        "validation accuracy")
    assert list(tmp_path.iterdir()) == []


def test_tune_runs_a_value_given_twice_once():
    args, _, _ = lenetkit.tuning.parse_args(["--lr", "0.01", "0.02", "0.01", "--batch-size", "64",
                                             "64", "--epochs", "2", "2", "--seed", "1", "0", "1"])
    assert (args.lr, args.batch_size, args.epochs, args.seeds) == ([0.01, 0.02], [64], [2], [1, 0])


def test_tune_names_its_own_flag_when_out_dir_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_main("tune.py", "--out-dir", tmp_path / "file", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"tune.py: error: argument --out-dir: can't write {tmp_path / 'file'}: "
        f"{tmp_path / 'file'} is not a folder")


def test_evaluate_scores_the_validation_split_with_tta_without_touching_the_test_figures(
        tiny_model, tiny_data):
    test_figure = tiny_model.with_suffix(".confusion.png")
    before = test_figure.stat().st_mtime_ns if test_figure.exists() else None
    result = run_main("evaluate.py", "--model", tiny_model, "--data-dir", tiny_data, "--split",
                      "val", "--tta", "--no-download")
    # the 100 images the tiny run held out; its digits never flipped, so no mirror images
    assert "val with TTA (5 views): 100 images" in result.stdout
    assert tiny_model.with_name(f"{tiny_model.stem}.val.tta.confusion.png").is_file()
    assert (test_figure.stat().st_mtime_ns if test_figure.exists() else None) == before


def test_the_committed_recipes_are_valid_train_py_configs():
    recipes = sorted((PROJECT_DIR / "configs").glob("*.json"))
    assert recipes, "configs/ holds the README's recipes"
    for recipe in recipes:
        config, _ = lenetkit.config.parse_args(["--config", str(recipe)])
        assert config.dataset in DATASETS and config.epochs > 0, recipe


def test_a_recipe_loads_into_the_same_config_object_that_the_checkpoint_stores(tiny_data, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"lr": 0.004, "epochs": 1, "batch_size": 50, "val_size": 100}))
    out = tmp_path / "model.pth"
    run_main("train.py", "--config", recipe, "--data-dir", tiny_data, "--out", out, "--seed", "7",
             "--no-download")
    config, _ = lenetkit.config.parse_args(["--config", str(recipe), "--seed", "7"])
    checkpoint = lenetkit.training.read_checkpoint(out.with_suffix(".ckpt"),
                                                   lenetkit.config.SETTINGS)
    assert checkpoint["config"] == asdict(config)
    assert (config.lr, config.epochs, config.seed) == (0.004, 1, 7)


def betas_through_a_run(flags: list[str], steps: int = 10) -> list[tuple[float, float]]:
    """AdamW's betas at each step of a one-epoch schedule that train.py builds from `flags`."""
    config, _ = lenetkit.config.parse_args(flags)
    model = LeNet()
    optimizer, scheduler = lenetkit.training.make_optimizer(model, config, steps_per_epoch=steps)
    betas = []
    for _ in range(steps):
        betas.append(tuple(optimizer.param_groups[0]["betas"]))
        optimizer.step()
        scheduler.step()
    return betas


def test_adams_betas_are_settings_and_stay_fixed_without_momentum_cycling(tmp_path):
    recipe = tmp_path / "recipe.json"
    settings = {"beta1": 0.7, "beta2": 0.9, "cycle_momentum": False, "epochs": 1}
    recipe.write_text(json.dumps(settings))
    assert set(betas_through_a_run(["--config", str(recipe)])) == {(0.7, 0.9)}
    assert set(betas_through_a_run(["--beta1", "0.8", "--no-cycle-momentum", "--epochs", "1"])) == {
        (0.8, 0.999)}


def test_by_default_one_cycle_still_cycles_beta1_between_095_and_085():
    betas = betas_through_a_run(["--epochs", "1"])
    first = [beta1 for beta1, _ in betas]
    assert first[0] == pytest.approx(0.95) and min(first) == pytest.approx(0.85, abs=0.01)
    assert {beta2 for _, beta2 in betas} == {0.999}


def test_a_beta1_that_momentum_cycling_would_overwrite_is_refused():
    with pytest.raises(SystemExit):
        lenetkit.config.parse_args(["--beta1", "0.7"])
    config, _ = lenetkit.config.parse_args(["--beta1", "0.7", "--schedule", "constant"])
    assert config.beta1 == 0.7
    # the default, which tune.py's recipes name, is accepted with cycling
    assert lenetkit.config.parse_args(["--beta1", "0.9"])[0].cycle_momentum


def sgd_training(*flags: str, steps: int = 100):
    """The CifarNet and the SGD, its parameter groups and schedule that train.py sets up from
    `flags`."""
    config, _ = lenetkit.config.parse_args(["--dataset", "cifar10", "--optimizer", "sgd",
                                            "--width", "8", *flags])
    training = lenetkit.training.setup_training(config, steps, torch.device("cpu"),
                                                images=torch.randn(8, 3, 32, 32))
    return training.model, training.optimizer, training.scheduler


def test_sgd_keeps_batch_norms_scales_at_one_and_steps_its_biases_64_times_faster():
    model, optimizer, _ = sgd_training("--lr", "0.5", "--weight-decay", "0.0064",
                                       "--schedule", "constant")
    weights, biases = optimizer.param_groups
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(norm.weight.requires_grad for norm in norms)
    assert {id(p) for p in biases["params"]} == {id(norm.bias) for norm in norms}
    assert (weights["lr"], weights["weight_decay"]) == (0.5, 0.0064)
    assert (biases["lr"], biases["weight_decay"]) == (32.0, pytest.approx(0.0001))
    assert weights["nesterov"] and weights["momentum"] == 0.9
    assert not sgd_training("--momentum", "0", "--schedule", "constant")[1].defaults["nesterov"]
    loss = model(torch.randn(4, 3, 32, 32)).square().mean()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight)) for norm in norms)


def test_the_triangle_schedule_rises_from_a_fifth_to_the_peak_at_23_percent_then_falls_to_7():
    _, optimizer, scheduler = sgd_training("--lr", "2", "--schedule", "triangle", "--epochs", "1")
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.4) and max(rates) == rates[23] == pytest.approx(2)
    assert rates[-1] == pytest.approx(0.14)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.14 * 64)


def test_each_optimizer_refuses_the_other_ones_settings_and_cycling_owns_the_momentum():
    for flags, error in (
            (["--momentum", "0.8", "--no-cycle-momentum"],
             "--momentum: --optimizer adamw has none"),
            (["--optimizer", "sgd", "--beta1", "0.9"], "--beta1: --optimizer sgd has none"),
            (["--optimizer", "sgd", "--beta2", "0.9"], "--beta2: --optimizer sgd has none"),
            (["--optimizer", "sgd", "--momentum", "0.8"], "one-cycle replaces it")):
        result = run_main("train.py", *flags, "--dry-run", check=False)
        assert result.returncode == 2 and error in result.stderr.splitlines()[-1], flags
    config, _ = lenetkit.config.parse_args(["--optimizer", "sgd", "--momentum", "0.8",
                                            "--schedule", "triangle"])
    assert config.momentum == 0.8


def test_an_optimizer_named_beside_a_recipe_leaves_out_the_recipes_settings_of_the_other():
    recipe = str(PROJECT_DIR / "configs" / "cifar10.json")
    config, _ = lenetkit.config.parse_args(["--config", recipe, "--optimizer", "adamw", "--lr",
                                            "0.01"])
    assert (config.optimizer, config.momentum, config.schedule) == ("adamw", 0.9, "triangle")
    assert lenetkit.config.parse_args(["--config", recipe])[0].momentum == 0.85


def test_sgd_learns_the_tiny_digits(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "5",
             "--optimizer", "sgd", "--lr", "0.1", "--schedule", "triangle", *TINY_TRAINING)
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.5  # chance is 0.1
    assert read_model_file(out)["metadata"]["optimizer"] == "sgd"


def test_a_recipe_beta_of_one_or_more_is_refused(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"beta2": 1.0}))
    with pytest.raises(SystemExit):
        lenetkit.config.parse_args(["--config", str(recipe)])


def test_the_fast_recipe_trains_the_fastnet_in_one_pass_with_fixed_betas():
    config, _ = lenetkit.config.parse_args(["--config", str(PROJECT_DIR / "configs" / "fast.json")])
    assert (config.arch, config.epochs, config.train_size, config.val_size) == (
        "fastnet", 1, None, 5000)
    assert (config.beta1, config.beta2, config.cycle_momentum) == (0.7, 0.9, False)
