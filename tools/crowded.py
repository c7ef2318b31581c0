"""The scripts timed as a user runs them, on a machine that other programs keep busy: each
workload in a child process, quiet and beside 1 and 3 CPU-bound processes (busy loops) started
and stopped here, under the thread policy (threads.py) and under libgomp's own defaults (a
thread a core, each spinning a while at every barrier) for comparison.

bench.py --crowded runs it and prints the table; docs/speed.md has its figures.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lenetkit.environment import PROJECT_DIR
from lenetkit.errors import UserError

BUSY_LOOP = "while True: pass"
LOADS = (0, 1, 3)  # competing processes


def policies() -> dict[str, dict[str, str]]:
    """The settings compared: the policy's (nothing set), and libgomp's own defaults, stated so
    that the policy leaves them alone: its spin count when OMP_WAIT_POLICY is unset, and
    torch's default thread count (a thread a core)."""
    return {"policy": {}, "libgomp default": {"GOMP_SPINCOUNT": "300000",
                                              "OMP_NUM_THREADS": str(torch.get_num_threads())}}

SETTLE_S = 0.5  # for the competitors to start running before the workload starts


@contextlib.contextmanager
def competing(count: int) -> Iterator[list[subprocess.Popen]]:
    """`count` CPU-bound processes (Python busy loops), running for the time of the block."""
    processes = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(SETTLE_S if count else 0)
        yield processes
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def workloads(data_dir: Path, model: Path, folder: Path, quick: bool) -> dict[str, list[str]]:
    """The commands timed: the fast recipe and the default one (two epochs: its time an
    epoch is what crowding changes), then evaluate.py on the test set; `quick`: the trainings
    on a small subset, for one epoch."""
    small = ["--train-size", "2000", "--val-size", "500", "--epochs", "1"] if quick else []
    data = ["--data-dir", str(data_dir), "--no-download"]
    script = lambda name: [sys.executable, str(PROJECT_DIR / name)]
    return {
        "fast recipe": [*script("train.py"), "--config", str(PROJECT_DIR / "configs/fast.json"),
                        "--seed", "4242", *data, "--out", str(folder / "fast.pth"), *small],
        "default recipe, 2 epochs": [*script("train.py"), "--epochs", "2", "--seed", "0", *data,
                                     "--out", str(folder / "default.pth"), *small],
        "evaluate.py": [*script("evaluate.py"), "--model", str(model), *data[:2],
                        "--out-dir", str(folder)],
    }


def seconds(command: list[str], environ: dict[str, str], folder: Path) -> float:
    """A training's own seconds (its metrics' train_seconds: start-up left out), or another
    command's wall time, start-up included."""
    for old in folder.glob("*.pth"):
        old.unlink()  # each run writes its model afresh
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environ, cwd=folder)
    wall = time.perf_counter() - started
    if result.returncode:
        said = (result.stderr.strip().splitlines() or ["nothing"])[-1]
        raise UserError(f"{' '.join(command[1:3])} exited {result.returncode}: {said}")
    if "--out" not in command:
        return wall
    metrics = Path(command[command.index("--out") + 1]).with_suffix(".metrics.json")
    return float(json.loads(metrics.read_text())["train_seconds"])


def crowded_rows(commands: dict[str, list[str]], loads: tuple[int, ...] = LOADS,
                 settings: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """A row for each command and policy: its seconds beside each number of `loads`, and each
    one's ratio to the quiet time (the first load)."""
    base = {name: value for name, value in os.environ.items()
            if name not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, command in commands.items():
            for policy, environ in (settings or policies()).items():
                times = {}
                for load in loads:
                    with competing(load):
                        times[load] = seconds(command, {**base, **environ}, Path(folder))
                ratios = {load: times[load] / times[loads[0]] for load in loads}
                rows.append({"workload": name, "policy": policy, "seconds": times,
                             "ratio": ratios})
    return rows


def print_rows(rows: list[dict]) -> None:
    loads = list(rows[0]["seconds"])
    print(f"{'workload':<26} {'threads':<16} "
          + " ".join(f"{f'beside {load}':>16}" for load in loads))
    for row in rows:
        print(f"{row['workload']:<26} {row['policy']:<16} "
              + " ".join(f"{row['seconds'][load]:7.1f}s ({row['ratio'][load]:4.1f}x)"
                         for load in loads))
