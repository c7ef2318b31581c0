"""torchrun: the same train.py on several processes (DistributedDataParallel, gloo on the CPU).
Each torchrun starts three Pythons: the tests share one uninterrupted two-process run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lenetkit.config import parse_args
from lenetkit.errors import UserError
from lenetkit.modelfile import read_model_file, read_torch_file
from lenetkit.prediction import load_model
from lenetkit.training import run

from conftest import PROJECT_DIR, TINY_TRAINING

TORCHRUN = Path(sys.executable).parent / "torchrun"


CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


pytestmark = pytest.mark.slow

needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(),
                                    reason="torchrun is not beside this Python")


def torchrun_command(*args, processes: int = 2) -> list[str]:
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}",
            str(PROJECT_DIR / "train.py"), *map(str, args)]


def torchrun(*args) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args), capture_output=True, text=True, env=CPU_ONLY,
                          timeout=300)


EPOCHS = 10  # enough that a SIGTERM sent as the first checkpoint appears lands mid-run
# A batch-norm network with SGD and lookahead: the most state a resumed run must restore on every
# process, and SGD fixes batch norm's scales before DistributedDataParallel notes what needs
# gradients.
SETTINGS = ("--arch", "convnet", "--width", "8", "--optimizer", "sgd", "--lr", "0.05",
            "--schedule", "triangle", "--lookahead", "--epochs", str(EPOCHS), "--seed", "4",
            *TINY_TRAINING)


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted run of train.py on two processes, alone in its folder: its model file and
    what torchrun printed."""
    out = tmp_path_factory.mktemp("two_processes") / "model.pth"
    result = torchrun("--data-dir", tiny_data, "--out", out, *SETTINGS)
    assert result.returncode == 0, result.stderr
    return out, result


@needs_torchrun
def test_two_processes_train_together_and_rank_0_alone_writes(two_process_run):
    out, result = two_process_run
    assert "2 processes (gloo): global batch 50, 25 per process" in result.stdout
    assert result.stdout.count(f"epoch {EPOCHS}/{EPOCHS}") == 1  # one log, from rank 0
    assert sorted(path.name for path in out.parent.iterdir()) == [
        "model.ckpt", "model.curves.png", "model.metrics.json", "model.pth"]
    history = json.loads(out.with_suffix(".metrics.json").read_text())["history"]
    assert history[-1]["val_accuracy"] > 0.5  # it learned the tiny task (chance is 0.1)
    assert load_model(out)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert read_model_file(out)["metadata"]["batch_size"] == 50


@needs_torchrun
def test_a_two_process_run_stopped_by_sigterm_resumes_to_the_weights_of_an_uninterrupted_one(
        two_process_run, tiny_data, tmp_path):
    whole, _ = two_process_run
    out = tmp_path / "stopped" / "model.pth"
    process = subprocess.Popen(torchrun_command("--data-dir", tiny_data, *SETTINGS, "--out", out),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=CPU_ONLY)
    while not out.with_suffix(".ckpt").exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert 0 < len(read_torch_file(out.with_suffix(".ckpt"))["history"]) < EPOCHS
    result = torchrun("--resume", "--data-dir", tiny_data, "--out", out, "--no-download")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resuming") == 1  # rank 0 alone says so; every process reads it
    expected, resumed = read_model_file(whole)["state_dict"], read_model_file(out)["state_dict"]
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_a_global_batch_that_does_not_divide_among_processes_is_refused(tiny_data, tmp_path):
    """As rank 0 of two would see it (in this process: the check comes before any collective)."""
    config, options = parse_args(["--data-dir", str(tiny_data), "--out", str(tmp_path / "m.pth"),
                                  "--batch-size", "51", "--val-size", "100", "--no-download"])
    with pytest.raises(UserError, match="--batch-size 51 is the global batch: it must divide "
                                        "evenly among 2 processes"):
        run(config, options, rank=0, world=2, device=torch.device("cpu"))
