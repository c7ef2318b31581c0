"""Non-digits (negatives.py), the digit score that refuses them (digitscore.py), its place in a
model file, and outlier exposure in training (TrainConfig.negatives)."""

import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_file import lenet_record

import lenetkit.detector
import lenetkit.training
from lenetkit.digitscore import KEEP_DIGITS, calibrate, check_digit_score, judge
from lenetkit.environment import PRETRAINED_MODEL_PATH, default_model_path
from lenetkit.modelfile import ModelFileError, read_model_file, save_model
from lenetkit.negatives import (
    BENCH_SEED_OFFSET,
    DIGIT_LIKE,
    FONTS,
    HELD_OUT_FONTS,
    LETTERS,
    SCRIBBLES,
    TEXTURES,
    TRAIN_COUNTS,
    TRAIN_FONTS,
    VAL_SEED_OFFSET,
    framed,
    letter_image,
    negative_images,
    negative_inputs,
    scribble_image,
    texture_image,
)
from lenetkit.prediction import Predictor
from lenetkit.training import uniform_loss

from conftest import PROJECT_DIR, TINY_TRAINING, run_main

SETTING = {"score": "msp", "threshold": 0.9, "scale": 0.05}
SEVEN = PROJECT_DIR / "examples" / "seven.png"


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_the_same_seed_draws_the_same_non_digits_and_the_splits_draw_different_ones():
    for draw in (scribble_image, texture_image):
        first, again = (draw(np.random.default_rng(7), 120) for _ in range(2))
        assert np.array_equal(pixels(first), pixels(again))
    for kind in ("letters", "scribbles", "textures"):
        train, val, bench = (negative_images(kind, split, 3, size=120)
                             for split in ("train", "val", "bench"))
        assert all(np.array_equal(pixels(a), pixels(b))
                   for a, b in zip(train, negative_images(kind, "train", 3, size=120)))
        assert not np.array_equal(pixels(train[1]), pixels(val[1]))
        assert not np.array_equal(pixels(val[1]), pixels(bench[1]))


def test_what_trains_never_meets_what_is_held_out():
    assert not set(TRAIN_FONTS) & set(HELD_OUT_FONTS)
    assert len({font for fonts in FONTS.values() for font in fonts}) == 12
    assert max(TRAIN_COUNTS.values()) < VAL_SEED_OFFSET < BENCH_SEED_OFFSET


def test_letters_a_person_may_read_as_digits_are_never_shown_as_non_digits():
    assert not set(LETTERS) & (DIGIT_LIKE | set(string.digits))
    for read_as_digit in "OoIlSZBgq":
        assert read_as_digit not in LETTERS
    assert "A" in LETTERS and "x" in LETTERS


def test_non_digits_are_dark_ink_on_light_paper_and_framed_as_digits_are():
    pictures = [letter_image("A", TRAIN_FONTS[0], 200),
                *(scribble_image(np.random.default_rng(0), 200, kind) for kind in SCRIBBLES
                  if kind != "dot"),  # a dot may be a speck, which the preprocessing refuses
                *(texture_image(np.random.default_rng(0), 200, kind) for kind in TEXTURES
                  if kind != "checker")]  # half ink: some read as a uniform page, refused
    for picture in pictures:
        gray = pixels(picture)
        assert picture.size == (200, 200) and np.median(gray) == 255 and gray.min() < 60
    inputs, refused = framed(pictures)
    assert refused == 0 and inputs.shape == (len(pictures), 28, 28)
    assert inputs.amax(dim=(1, 2)).eq(1).all()  # white ink on black, as MNIST's digits
    assert inputs[:, :4].sum() == 0  # in the 20-pixel box of MNIST's frame


def test_a_blank_page_is_left_out_as_the_preprocessing_refuses_it():
    blank = scribble_image(np.random.default_rng(0), 100, "dot").point(lambda _: 255)
    assert framed([blank])[1] == 1


def peaked(rows: int, classes: int = 10, height: float = 20.0) -> torch.Tensor:
    logits = torch.zeros(rows, classes)
    logits[:, 3] = height
    return logits


def test_without_a_calibrated_score_nothing_is_judged():
    assert judge(lenet_record(), peaked(2)) is None


def test_the_score_refuses_flat_answers_and_keeps_peaked_ones():
    record = {**lenet_record(), "digit_score": SETTING}
    logits = torch.cat([peaked(1), torch.zeros(1, 10), peaked(1, height=math.log(9 * 0.9 / 0.1))])
    scores, refused = judge(record, logits)
    assert refused.tolist() == [False, True, False]  # the last: exactly at the threshold
    assert scores[0] > 0.5 > scores[1] and scores[2] == pytest.approx(0.5)
    assert ((0 <= scores) & (scores <= 1)).all()


def test_calibration_keeps_the_share_of_validation_digits_asked_for():
    torch.manual_seed(0)
    digits = peaked(2000) + torch.randn(2000, 10) * 3
    others = torch.randn(500, 10)
    for name in ("msp", "energy"):
        setting = calibrate(name, digits, others)
        assert check_digit_score(setting, 10) is None
        record = {**lenet_record(), "digit_score": setting}
        assert (~judge(record, digits)[1]).float().mean() >= KEEP_DIGITS
        assert judge(record, others)[1].float().mean() > 0.9


def test_a_model_file_keeps_its_digit_score(tmp_path):
    path = tmp_path / "model.pth"
    save_model({**lenet_record(), "digit_score": SETTING}, path)
    assert read_model_file(path)["digit_score"] == SETTING
    save_model(lenet_record(), path)
    assert "digit_score" not in read_model_file(path)


@pytest.mark.parametrize("bad, complaint", [
    ("msp", "must be a dict of scale, score, threshold"),
    ({**SETTING, "score": "entropy"}, "score must be one of msp, energy"),
    ({**SETTING, "threshold": float("nan")}, "finite numbers"),
    ({**SETTING, "threshold": True}, "finite numbers"),
    ({**SETTING, "threshold": 1.5}, r"threshold must lie in \[0.1, 1\] for msp"),
    ({**SETTING, "scale": 0.0}, "scale must be at least 1e-06"),
    ({**SETTING, "scale": 1e-50}, "scale must be at least 1e-06"),
    ({**SETTING, "score": ["msp"]}, "score must be one of"),
    ({**SETTING, "threshold": 2**1100}, "finite numbers"),
    ({**SETTING, "extra": 1}, "must be a dict of"),
])
def test_a_damaged_digit_score_is_refused_in_one_line(tmp_path, bad, complaint):
    path = tmp_path / "model.pth"
    save_model({**lenet_record(), "digit_score": bad}, path)
    with pytest.raises(ModelFileError, match=complaint) as error:
        read_model_file(path)
    assert "\n" not in str(error.value) and "digit_score" in str(error.value)


def test_the_uniform_loss_is_lowest_when_every_class_is_as_likely():
    assert uniform_loss(torch.zeros(4, 10)).item() == pytest.approx(math.log(10))
    assert uniform_loss(peaked(4)) > uniform_loss(torch.zeros(4, 10))


@pytest.fixture
def few_negatives(monkeypatch):
    """Training runs take a few scribbles as their non-digits, in place of the full set, which
    takes a minute to frame."""
    few = (negative_inputs({"scribbles": 40}, "train", size=112) * 255).to(torch.uint8)
    monkeypatch.setattr(lenetkit.training, "training_negatives", lambda data_dir: few)


def test_training_with_negatives_writes_a_calibrated_digit_score(tiny_data, tmp_path,
                                                                few_negatives):
    out = tmp_path / "model.pth"
    result = run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1",
             "--negatives", "0.5", *TINY_TRAINING)
    record = read_model_file(out)
    assert record["metadata"]["negatives"] == 0.5
    assert check_digit_score(record["digit_score"], 10) is None
    assert "digit score: msp" in result.stdout
    # a model file written later from the checkpoint keeps it too
    run_main("save_model.py", out.with_suffix(".ckpt"), "--out", tmp_path / "again.pth")
    assert read_model_file(tmp_path / "again.pth")["digit_score"] == record["digit_score"]


def test_a_detector_adds_a_digit_score_and_leaves_the_reader_as_trained(tiny_data, tmp_path,
                                                                       few_negatives):
    plain, detected = tmp_path / "plain.pth", tmp_path / "detected.pth"
    for out, extra in ((plain, ()), (detected, ("--detector-epochs", "1"))):
        result = run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1",
                          "--seed", "3", *extra, *TINY_TRAINING)
    record, reader = read_model_file(detected), read_model_file(plain)
    assert record["arch"] == "lenet+detector" and "digit_score" not in reader
    assert "detector: 1 epoch in" in result.stdout and "digit score: energy" in result.stdout
    # the first run on a data folder frames the non-digits for minutes: it says so beforehand
    assert result.stdout.index("non-digits: drawing and framing") < result.stdout.index("epoch 1")
    assert check_digit_score(record["digit_score"], 10) is None
    assert all(torch.equal(record["state_dict"][f"reader.{name}"], weights)
               for name, weights in reader["state_dict"].items())
    assert record["metadata"]["val_accuracy"] == reader["metadata"]["val_accuracy"]
    # resumed once finished, the run keeps its detector rather than training one on top of it
    again = run_main("train.py", "--resume", "--data-dir", tiny_data, "--out", detected,
                     *TINY_TRAINING)
    assert "detector:" not in again.stdout and "digit score: energy" in again.stdout
    assert all(torch.equal(read_model_file(detected)["state_dict"][name], weights)
               for name, weights in record["state_dict"].items())


def test_a_recipe_can_widen_its_detector_and_show_it_digits_drawn_with_a_fine_pen(
        tiny_data, tmp_path, few_negatives, monkeypatch):
    redrawn, fine_pen = [], lenetkit.detector.fine_pen

    def counted(images, *args):
        redrawn.append(len(images))
        return fine_pen(images, *args)

    monkeypatch.setattr(lenetkit.detector, "fine_pen", counted)
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", "--seed", "3",
             "--detector-epochs", "1", "--detector-scale", "2", "--detector-pen", "0.5",
             *TINY_TRAINING)
    record = read_model_file(out)
    assert record["model_args"]["detector_scale"] == 2
    assert record["state_dict"]["detector.features.0.weight"].shape[0] == 2 * 6
    assert record["state_dict"]["reader.features.0.weight"].shape[0] == 6
    assert sum(redrawn) > 0  # a share of the detector's training images, fine-penned


def test_a_run_stopped_while_its_detector_trains_says_how_to_resume_and_resumes_to_one(
        tiny_data, tmp_path, few_negatives, monkeypatch):
    recipe_detector = lenetkit.training.recipe_detector

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lenetkit.training, "recipe_detector", ctrl_c)
    out = tmp_path / "model.pth"
    flags = ("--data-dir", tiny_data, "--out", out, "--epochs", "1", "--detector-epochs", "1",
             *TINY_TRAINING)
    stopped = run_main("train.py", *flags, check=False)
    assert stopped.returncode == 130 and "continue with: python train.py --resume" in stopped.stderr
    monkeypatch.setattr(lenetkit.training, "recipe_detector", recipe_detector)
    run_main("train.py", "--resume", *flags)
    assert read_model_file(out)["arch"] == "lenet+detector"


def test_a_detector_is_for_the_digits_lenet_and_needs_a_validation_split(tiny_data, tmp_path):
    result = run_main("train.py", "--data-dir", tiny_data, "--arch", "twoconv",
                      "--detector-epochs", "1", "--out", tmp_path / "model.pth", check=False)
    assert result.returncode == 2 and "the detector is for mnist's lenet" in result.stderr
    result = run_main("train.py", "--data-dir", tiny_data, "--val-size", "0",
                      "--detector-epochs", "1", "--out", tmp_path / "model.pth", check=False)
    assert result.returncode == 2 and "--val-size 0 leaves none" in result.stderr
    for flag, value in (("--detector-scale", "2"), ("--detector-pen", "0.2")):
        result = run_main("train.py", "--data-dir", tiny_data, flag, value,
                          "--out", tmp_path / "model.pth", check=False)
        assert result.returncode == 2 and f"{flag}: there is no detector without" in result.stderr
    # a recipe's detector settings go with its detector when the flag turns it off
    run_main("train.py", "--data-dir", tiny_data, "--config", PROJECT_DIR / "configs" /
             "robust.json", "--detector-epochs", "0", "--dry-run", "--out", tmp_path / "m.pth",
             *TINY_TRAINING)


def test_negatives_are_for_digit_models_only(tiny_data, tmp_path):
    result = run_main("train.py", "--data-dir", tiny_data, "--dataset", "fashion-mnist",
                      "--negatives", "0.5", "--out", tmp_path / "model.pth", check=False)
    assert result.returncode == 2 and "--negatives: its non-digits are for mnist" in result.stderr


def model_with_score(tmp_path, threshold: float) -> Path:
    """The shipped model, given a digit score that refuses everything (a threshold above any
    logits' energy) or nothing (below any)."""
    path = tmp_path / f"scored{threshold:g}.pth"
    setting = {"score": "energy", "threshold": threshold, "scale": 1.0}
    save_model({**read_model_file(default_model_path()), "digit_score": setting}, path)
    return path


def test_a_prediction_the_digit_score_refuses_says_no_digit_and_is_not_confident(tmp_path):
    refused = Predictor(model_with_score(tmp_path, 1e6))(SEVEN)
    assert not refused.is_digit and not refused.confident and refused.digit_score < 0.5
    assert str(refused).startswith("no digit (it does not look like one: digit score 0%; "
                                   "the likeliest digit 7 (")
    kept = Predictor(model_with_score(tmp_path, -1e6))(SEVEN)
    assert kept.is_digit and kept.confident and kept.digit_score > 0.5 and str(kept)[0] == "7"
    unscored_file = tmp_path / "unscored.pth"
    save_model({key: value for key, value in read_model_file(default_model_path()).items()
                if key != "digit_score"}, unscored_file)
    unscored = Predictor(unscored_file)(SEVEN)
    assert unscored.digit_score is None and unscored.is_digit  # a model that can't tell


def test_the_command_line_answers_no_digit_and_exits_1(tmp_path):
    result = run_main("load_model.py", "--model", model_with_score(tmp_path, 1e6), SEVEN,
                      check=False)
    assert result.returncode == 1 and result.stdout.startswith(f"{SEVEN}: no digit (")
    result = run_main("load_model.py", "--model", model_with_score(tmp_path, -1e6), SEVEN)
    assert result.stdout.startswith(f"{SEVEN}: 7 (")


def test_the_shipped_model_answers_no_digit_for_a_letter_and_a_scribble_and_reads_a_digit(
        tmp_path):
    letter, scribble = tmp_path / "A.png", tmp_path / "spiral.png"
    letter_image("A", HELD_OUT_FONTS[0]).save(letter)
    scribble_image(np.random.default_rng(7), kind="spiral").save(scribble)
    result = run_main("load_model.py", "--model", PRETRAINED_MODEL_PATH, letter, scribble, SEVEN,
                      check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert lines[0].startswith(f"{letter}: no digit (")
    assert lines[1].startswith(f"{scribble}: no digit (")
    assert lines[2].startswith(f"{SEVEN}: 7 (")
