"""The thread policy (threads.py): how many threads the scripts compute on, and how they wait."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import lenetkit.commands
from lenetkit import threads
from lenetkit.threads import busy_seconds, prepare_process, thread_count, use_threads
from lenetkit.training import checkpoint_threads

from conftest import PROJECT_DIR, TINY_TRAINING, run_main

DIGIT = PROJECT_DIR / "examples" / "seven.png"

STAT = """cpu  900 0 900 5000 10 0 0 0 0 0
cpu0 100 5 50 2000 3 1 2 7 0 0
cpu1 300 0 100 3000 7 0 0 0 0 0
intr 12345
"""


def test_waiting_threads_spin_briefly_unless_the_environment_already_says_how_they_wait():
    for given, expected in [({}, {"GOMP_SPINCOUNT": "30000"}),
                            ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE"}),
                            ({"GOMP_SPINCOUNT": "5"}, {"GOMP_SPINCOUNT": "5"})]:
        environ = dict(given)
        prepare_process(environ)
        assert environ == expected


def test_busy_time_counts_every_state_but_idle_and_iowait_of_the_cpus_asked_for():
    ticks = os.sysconf("SC_CLK_TCK")
    assert busy_seconds(STAT, {0}) == pytest.approx((100 + 5 + 50 + 1 + 2 + 7) / ticks)
    assert busy_seconds(STAT, {0, 1}) == pytest.approx((165 + 400) / ticks)
    assert busy_seconds(STAT, {5}) == 0


def test_a_thread_a_core_less_the_cores_others_keep_busy_and_never_none():
    assert thread_count(2, None) == 2  # no sample: every core
    assert thread_count(2, 0.1) == 2
    assert thread_count(2, 1.0) == 1
    assert thread_count(2, 3.0) == 1
    assert thread_count(8, 2.4) == 6


def test_threads_asked_for_win_then_the_environment_then_the_default():
    before = torch.get_num_threads()
    try:
        assert use_threads(1, environ={"OMP_NUM_THREADS": "2"}) == 1 == torch.get_num_threads()
        torch.set_num_threads(2)
        assert use_threads(None, default=1, environ={"OMP_NUM_THREADS": "2"}) == 2
        assert torch.get_num_threads() == 2  # as OpenMP read the environment: left alone
        assert use_threads(None, default=1, environ={}) == 1 == torch.get_num_threads()
        for ignored in ("abc", "0", "-2"):  # not a thread count: libgomp says so, and ignores it
            assert use_threads(None, default=1, environ={"OMP_NUM_THREADS": ignored}) == 1
    finally:
        torch.set_num_threads(before)


def test_a_quiet_machine_gets_a_thread_a_usable_core(monkeypatch):
    start = threads.CpuSample(at=0.0, busy=10.0, own=1.0)
    monkeypatch.setattr(threads, "_started", start)
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1})
    # in one second, this process used one core and nothing else ran: both cores are free
    monkeypatch.setattr(threads, "sample", lambda cpus: threads.CpuSample(1.0, 11.0, 2.0))
    assert threads.policy_threads() == 2
    # another process kept a core busy: one thread, on the core that is free
    monkeypatch.setattr(threads, "sample", lambda cpus: threads.CpuSample(1.0, 12.0, 2.0))
    assert threads.policy_threads() == 1


def test_the_scripts_start_through_the_policy_and_that_imports_no_torch():
    import evaluate
    import load_model
    import save_model
    import serve
    import train
    import tune

    assert train.main is lenetkit.commands.train and evaluate.main is lenetkit.commands.evaluate
    assert load_model.main is lenetkit.commands.predict and tune.main is lenetkit.commands.tune
    assert serve.main is lenetkit.commands.serve and save_model.main is lenetkit.commands.save
    code = "import sys, lenetkit.commands, load_model; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True,
                            text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
    assert result.stdout.strip() == "False"


def test_importing_the_package_and_predicting_keep_the_programs_own_settings():
    code = ("import os, torch; torch.set_num_threads(3); from lenetkit import predict; "
            f"predict({str(DIGIT)!r}); "
            "print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())")
    environ = {name: value for name, value in os.environ.items()
               if name not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True,
                            text=True, check=True, env=environ)
    assert result.stdout.split() == ["None", "3"]


def test_threads_is_a_positive_whole_number():
    result = run_main("load_model.py", "--threads", "0", DIGIT, check=False)
    assert result.returncode == 2 and "--threads" in result.stderr
    assert run_main("load_model.py", "--threads", "1", DIGIT).stdout.startswith(
        f"{DIGIT}: ")


def test_the_crowded_bench_times_each_command_beside_busy_processes_it_then_stops():
    from crowded import competing, crowded_rows

    with competing(2) as processes:
        assert len(processes) == 2 and all(process.poll() is None for process in processes)
    assert all(process.poll() is not None for process in processes)
    rows = crowded_rows({"nothing": [sys.executable, "-c", "pass"]}, loads=(0, 1),
                        settings={"policy": {}, "one thread": {"OMP_NUM_THREADS": "1"}})
    assert [(row["workload"], row["policy"]) for row in rows] == [("nothing", "policy"),
                                                                  ("nothing", "one thread")]
    assert all(row["seconds"][1] > 0 and row["ratio"][0] == 1 for row in rows)


def test_a_resumed_run_computes_on_the_threads_it_started_with(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    result = run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1",
                      "--threads", "1", *TINY_TRAINING)
    assert "on cpu (1 thread) in" in result.stdout
    assert json.loads(out.with_suffix(".metrics.json").read_text())["threads"] == 1
    resumed = argparse.Namespace(resume=True, out=out)
    assert checkpoint_threads(resumed) == 1  # what `train.py --resume` computes on
    assert checkpoint_threads(argparse.Namespace(resume=False, out=out)) is None
