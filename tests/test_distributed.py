"""torchrun: the same train.py on several processes (DistributedDataParallel, gloo on the CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lenetkit.modelfile import read_model_file, read_torch_file
from lenetkit.prediction import load_model

from conftest import PROJECT_DIR, TINY_TRAINING

TORCHRUN = Path(sys.executable).parent / "torchrun"


CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def torchrun_command(*args, processes: int = 2) -> list[str]:
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", str(PROJECT_DIR / "train.py"),
            *map(str, args)]


def torchrun(*args) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args), capture_output=True, text=True, env=CPU_ONLY, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this Python")
def test_two_processes_train_together_and_rank_0_alone_writes(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    result = torchrun("--data-dir", tiny_data, "--out", out, "--epochs", "3", "--seed", "4", *TINY_TRAINING)
    assert result.returncode == 0, result.stderr
    assert "2 processes (gloo): global batch 50, 25 per process" in result.stdout
    assert result.stdout.count("epoch  3/3") == 1  # one log, from rank 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "model.ckpt", "model.curves.png", "model.metrics.json", "model.pth"]
    history = json.loads(out.with_suffix(".metrics.json").read_text())["history"]
    assert history[-1]["val_accuracy"] > 0.5  # it learned the tiny task (chance is 0.1)
    assert load_model(out)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert read_model_file(out)["metadata"]["batch_size"] == 50


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this Python")
def test_two_processes_train_a_batch_norm_network_with_sgd_and_lookahead(tiny_data, tmp_path):
    """SGD fixes batch norm's scales before DistributedDataParallel notes what needs gradients."""
    out = tmp_path / "model.pth"
    result = torchrun("--data-dir", tiny_data, "--out", out, "--arch", "convnet", "--width", "8",
                      "--optimizer", "sgd", "--lr", "0.05", "--schedule", "triangle", "--lookahead",
                      "--epochs", "5", *TINY_TRAINING)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.with_suffix(".metrics.json").read_text())["val_accuracy"] > 0.5


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this Python")
def test_resume_reads_the_checkpoint_on_every_process(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    assert torchrun("--data-dir", tiny_data, "--out", out, "--epochs", "2", *TINY_TRAINING).returncode == 0
    before = read_model_file(out)["state_dict"]
    result = torchrun("--resume", "--data-dir", tiny_data, "--out", out, "--no-download")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resuming") == 1 and "after epoch 2 of 2" in result.stdout
    after = read_model_file(out)["state_dict"]
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside this Python")
def test_a_two_process_run_stopped_by_sigterm_resumes_to_the_weights_of_an_uninterrupted_one(tiny_data, tmp_path):
    settings = ["--data-dir", tiny_data, "--epochs", "60", "--seed", "4", *TINY_TRAINING]
    whole = tmp_path / "whole" / "model.pth"
    assert torchrun(*settings, "--out", whole).returncode == 0
    out = tmp_path / "stopped" / "model.pth"
    process = subprocess.Popen(torchrun_command(*settings, "--out", out), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=CPU_ONLY)
    while not out.with_suffix(".ckpt").exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert 0 < len(read_torch_file(out.with_suffix(".ckpt"))["history"]) < 60
    result = torchrun("--resume", "--data-dir", tiny_data, "--out", out, "--no-download")
    assert result.returncode == 0, result.stderr
    expected, resumed = read_model_file(whole)["state_dict"], read_model_file(out)["state_dict"]
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_a_global_batch_that_does_not_divide_among_processes_is_refused(tiny_data, tmp_path):
    result = torchrun("--data-dir", tiny_data, "--out", tmp_path / "m.pth", "--batch-size", "51", "--val-size", "100",
                      "--no-download")
    assert result.returncode != 0 and "--batch-size 51 is the global batch" in result.stderr
