"""Nothing lost, nothing let in: interruptions, kills at random moments, divergence, concurrent writers."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import PROJECT_DIR, TINY_TRAINING, run_script
from load_model import read_model_file, read_torch_file


def start_training(*args) -> subprocess.Popen:
    """train.py in a child process, returned once its training loop has started."""
    process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "train.py"), *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
    for line in process.stdout:
        if line.startswith("model:"):
            return process
    raise AssertionError(f"train.py ended before training: {process.communicate()[1]}")


def plain_history(out) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"}
            for row in json.loads(out.with_suffix(".metrics.json").read_text())["history"]]


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_keeps_the_last_epoch_and_says_how_to_resume(tiny_data, tmp_path, signal_number):
    out = tmp_path / "model.pth"
    process = start_training("--data-dir", tiny_data, "--out", out, "--epochs", "500", *TINY_TRAINING)
    while not out.with_suffix(".ckpt").exists():
        time.sleep(0.01)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.count("\n") == 1 and stderr.startswith("interrupted: ")
    assert f"continue with: python train.py --resume --out {out}" in stderr
    saved_epoch = int(stderr.split(" keeps epoch ")[1].split(";")[0])
    assert read_torch_file(out.with_suffix(".ckpt"))["history"][-1]["epoch"] == saved_epoch


def test_twenty_kills_at_random_moments_lose_nothing_and_change_nothing(tiny_data, tmp_path):
    """SIGKILL lands anywhere, saves included. After each kill the checkpoint (and the model file, once
    written) loads, and the run resumed after every kill ends with the weights of an uninterrupted run."""
    settings = ["--data-dir", tiny_data, "--epochs", "200", "--seed", "11", *TINY_TRAINING]
    reference = tmp_path / "reference" / "model.pth"
    run_script("train.py", *settings, "--out", reference)

    out = tmp_path / "killed" / "model.pth"
    checkpoint = out.with_suffix(".ckpt")
    moments = random.Random(20261124)
    epochs_at_kills = []
    for _ in range(20):
        process = start_training(*settings, "--out", out, *(["--resume"] if checkpoint.exists() else []))
        time.sleep(moments.uniform(0, 1.0))
        process.kill()
        process.communicate()
        if checkpoint.exists():
            epochs_at_kills.append(len(read_torch_file(checkpoint)["history"]))  # whole: it loads
        if out.exists():
            read_model_file(out)
    run_script("train.py", *settings, "--out", out, *(["--resume"] if checkpoint.exists() else []))

    expected, resumed = read_model_file(reference)["state_dict"], read_model_file(out)["state_dict"]
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert plain_history(out) == plain_history(reference)
    leftovers = {path.name for path in out.parent.iterdir()} - {
        "model.pth", "model.ckpt", "model.metrics.json", "model.curves.png"}
    assert all(name.startswith(".model.") and name.endswith(".tmp") for name in leftovers)  # only temporaries
    print(f"\n20 SIGKILLs: checkpoint whole after each (at epochs {epochs_at_kills}); {len(leftovers)} killed "
          "a save midway (its temporary file left behind, the real file intact); final weights bit-identical")


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_its_last_good_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    run_script("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", *TINY_TRAINING)
    good = out.with_suffix(".ckpt").read_bytes()
    result = run_script("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "3", "--lr", "1e30",
                        "--schedule", "constant", *TINY_TRAINING, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the training loss became nan in epoch 1: training diverged")
    assert out.with_suffix(".ckpt").read_bytes() == good


def test_two_runs_writing_the_same_path_leave_whole_files(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    runs = [subprocess.Popen([sys.executable, str(PROJECT_DIR / "train.py"), "--data-dir", str(tiny_data),
                              "--out", str(out), "--epochs", "3", "--seed", str(seed), *TINY_TRAINING],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read()
    assert read_model_file(out)["metadata"]["seed"] in (1, 2)
    assert read_torch_file(out.with_suffix(".ckpt"))["settings"]["seed"] in (1, 2)
