"""Nothing lost, nothing let in: interruptions, kills at random moments, divergence, concurrent
writers."""

import contextlib
import errno
import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import lenetkit.cli
import lenetkit.datasets
import lenetkit.outputs
import lenetkit.training
import lenetkit.tuning
from lenetkit.datasets import load_dataset
from lenetkit.errors import UserError
from lenetkit.evaluation import figure_paths, figure_stems
from lenetkit.modelfile import read_model_file, read_torch_file, save_atomic
from lenetkit.outputs import check_output_file, write_json, write_text
from lenetkit.plots import plot_history

from conftest import (
    PROJECT_DIR,
    REAL_DATA_DIR,
    REAL_FASHION_PRESENT,
    TINY_TRAINING,
    needs_real_mnist,
    run_main,
    write_idx,
    write_mnist,
)


def training_process(*args) -> subprocess.Popen:
    """train.py started in a child process."""
    return subprocess.Popen([sys.executable, str(PROJECT_DIR / "train.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})


def training_started(process: subprocess.Popen) -> subprocess.Popen:
    """`process`, once its training loop has started."""
    for line in process.stdout:
        if line.startswith("model:"):
            return process
    raise AssertionError(f"train.py ended before training: {process.communicate()[1]}")


# A Python that has imported train.py once, and forks a child for each training run: each child is
# a whole process (a SIGKILL lands in it as in any other), started without the seconds a fresh
# Python takes to import torch (and torch._dynamo, which the first optimizer imports). It reads a
# run's log path and command line, one JSON line each, and answers the child's pid, then its exit
# status once it has ended. It runs no torch operation itself, so each child starts its own
# threads.
FORK_SERVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch._dynamo
import train
from lenetkit.cli import run_cli

for request in sys.stdin:
    log, argv = json.loads(request)
    pid = os.fork()
    if pid == 0:
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv = argv
        try:
            run_cli(train.main)
            status = 0
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class ForkServer:
    """train.py runs in child processes forked from a Python that has imported it already."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(PROJECT_DIR)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1",
                                             "CUDA_VISIBLE_DEVICES": ""})

    def start_training(self, log, *args) -> int:
        """A train.py run's pid, once its training loop has started (its log says `model:`)."""
        argv = [str(PROJECT_DIR / "train.py"), *map(str, args)]
        self.process.stdin.write(json.dumps([str(log), argv]) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        while not any(line.startswith("model:") for line in read_lines(log)):
            if self.process.poll() is not None or not alive(pid):
                self.wait()
                raise AssertionError(f"train.py ended before training: {log.read_text()}")
            time.sleep(0.01)
        return pid

    def wait(self) -> int:
        """The exit status of the last run started, once it has ended."""
        return int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


def read_lines(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """Whether `pid` runs (the fork server reaps its children as they end)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def plain_history(out) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"}
            for row in json.loads(out.with_suffix(".metrics.json").read_text())["history"]]


@pytest.mark.slow
def test_ctrl_c_or_sigterm_keeps_the_last_epoch_and_says_how_to_resume(tiny_data, tmp_path):
    """Ctrl-C (SIGINT) and SIGTERM, each sent to its own run; the two start at once."""
    outs = {number: tmp_path / number.name / "model.pth"
            for number in (signal.SIGINT, signal.SIGTERM)}
    processes = {number: training_process("--data-dir", tiny_data, "--out", out, "--epochs", "500",
                                          *TINY_TRAINING)
                 for number, out in outs.items()}
    for signal_number, process in processes.items():
        out = outs[signal_number]
        training_started(process)
        while not out.with_suffix(".ckpt").exists() and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, signal_number
        assert stderr.count("\n") == 1 and stderr.startswith("interrupted: ")
        assert f"continue with: python train.py --resume --out {out}" in stderr
        saved_epoch = int(stderr.split(" keeps epoch ")[1].split(";")[0])
        assert read_torch_file(out.with_suffix(".ckpt"))["history"][-1]["epoch"] == saved_epoch


@pytest.mark.slow
def test_twenty_kills_at_random_moments_lose_nothing_and_change_nothing(tiny_data, tmp_path):
    """SIGKILL lands anywhere, saves included. After each kill the checkpoint (and the model file,
    once written) loads, and the run resumed after every kill ends with the weights of an
    uninterrupted run. The killed runs are processes forked from a Python that has imported
    train.py (ForkServer); the reference and the last run run in this one. Each kill lands in the
    first half second of its run, a few epochs (a save after each): on an idle machine about 60
    of the 80 epochs in all, fewer on a busier one."""
    settings = ["--data-dir", tiny_data, "--epochs", "80", "--seed", "11", *TINY_TRAINING]
    reference = tmp_path / "reference" / "model.pth"
    run_main("train.py", *settings, "--out", reference)

    out = tmp_path / "killed" / "model.pth"
    checkpoint = out.with_suffix(".ckpt")
    moments = random.Random(20261124)
    epochs_at_kills = []
    runs = ForkServer()
    for kill in range(20):
        log = tmp_path / f"kill-{kill}.log"
        pid = runs.start_training(log, *settings, "--out", out,
                                  *(["--resume"] if checkpoint.exists() else []))
        time.sleep(moments.uniform(0, 0.5))
        with contextlib.suppress(ProcessLookupError):  # it ended on its own: its status says how
            os.kill(pid, signal.SIGKILL)
        status = os.waitstatus_to_exitcode(runs.wait())
        # killed, or (on a machine fast enough to finish the 80 epochs first) done
        assert status in (-signal.SIGKILL, 0), f"train.py ended with {status}:\n{log.read_text()}"
        if checkpoint.exists():
            epochs_at_kills.append(len(read_torch_file(checkpoint)["history"]))  # whole: it loads
        if out.exists():
            read_model_file(out)
    runs.close()
    run_main("train.py", *settings, "--out", out, *(["--resume"] if checkpoint.exists() else []))

    expected, resumed = read_model_file(reference)["state_dict"], read_model_file(out)["state_dict"]
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert plain_history(out) == plain_history(reference)
    leftovers = {path.name for path in out.parent.iterdir()} - {
        "model.pth", "model.ckpt", "model.metrics.json", "model.curves.png"}
    # only temporaries
    assert all(name.startswith(".model.") and name.endswith(".tmp") for name in leftovers)
    print(f"\n20 SIGKILLs: checkpoint whole after each (at epochs {epochs_at_kills}); "
          f"{len(leftovers)} killed a save midway (its temporary file left behind, the real file "
          "intact); final weights bit-identical")


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_its_last_good_checkpoint(tiny_data,
                                                                                       tmp_path):
    out = tmp_path / "model.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "1", *TINY_TRAINING)
    good = out.with_suffix(".ckpt").read_bytes()
    result = run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "3", "--lr",
                      "1e30", "--schedule", "constant", *TINY_TRAINING, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: the training loss became nan in epoch 1: training diverged")
    assert out.with_suffix(".ckpt").read_bytes() == good


@pytest.mark.slow
def test_two_runs_writing_the_same_path_leave_whole_files(tiny_data, tmp_path):
    out = tmp_path / "model.pth"
    # one thread each: two processes on two cores, not four threads contending for them
    runs = [subprocess.Popen([sys.executable, str(PROJECT_DIR / "train.py"), "--data-dir",
                              str(tiny_data), "--out", str(out), "--epochs", "3", "--seed",
                              str(seed), *TINY_TRAINING],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
            for seed in (1, 2)]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read()
    assert read_model_file(out)["metadata"]["seed"] in (1, 2)
    assert read_torch_file(out.with_suffix(".ckpt"))["config"]["seed"] in (1, 2)


# Round two: what a hostile tester still broke.

def test_an_output_path_is_refused_when_a_symlink_a_pipe_a_folder_or_a_device_is_there(tmp_path):
    target = tmp_path / "target.pth"
    target.write_bytes(b"kept")
    (tmp_path / "link.pth").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.pth")
    (tmp_path / "folder.pth").mkdir()
    expected = {"link.pth": "is a symbolic link", "pipe.pth": "not a regular file",
                "folder.pth": "is a folder"}
    for name, reason in expected.items():
        with pytest.raises(UserError, match=reason):
            check_output_file(tmp_path / name)
        with pytest.raises(UserError, match=reason):  # the writer checks again, at write time
            write_text(tmp_path / name, "replaced?")
    with pytest.raises(UserError, match="/dev/null is not a regular file"):
        check_output_file("/dev/null")  # checked only: if the check failed, nothing is written
    assert target.read_bytes() == b"kept" and (tmp_path / "link.pth").is_symlink()
    assert check_output_file(target) == target  # a regular file is replaced; an absent one created


@pytest.mark.parametrize("script", ["train.py", "save_model.py", "tools/bench.py"])
def test_every_scripts_out_refuses_a_pipe_before_any_work(tmp_path, script):
    os.mkfifo(tmp_path / "pipe.pth")
    arguments = [tmp_path / "model.ckpt"] if script == "save_model.py" else []
    result = run_main(script, *arguments, "--out", tmp_path / "pipe.pth", check=False)
    assert result.returncode == 2 and "pipe.pth is not a regular file" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pipe.pth"]


def test_bench_refuses_a_folder_as_its_out_before_benchmarking(tmp_path):
    result = run_main("tools/bench.py", "--quick", "--out", tmp_path, check=False)
    assert result.returncode == 2 and f"{tmp_path} is a folder; give a file name" in result.stderr


def test_a_symlinked_checkpoint_beside_out_is_refused_before_training(tiny_data, tmp_path):
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(b"someone else's file")
    (tmp_path / "model.ckpt").symlink_to(elsewhere)
    result = run_main("train.py", "--data-dir", tiny_data, "--out", tmp_path / "model.pth",
                      "--epochs", "1", *TINY_TRAINING, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'model.ckpt'} is a symbolic link")
    assert elsewhere.read_bytes() == b"someone else's file"
    assert not (tmp_path / "model.pth").exists()


def test_a_full_disk_keeps_the_old_json_whole_and_says_so_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "model.metrics.json"
    write_json(path, {"val_accuracy": 0.5})

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lenetkit.outputs.os, "fsync", disk_full)
    with pytest.raises(UserError, match=f"can't write {path}: No space left on device"):
        write_json(path, {"val_accuracy": 0.9})
    assert json.loads(path.read_text()) == {"val_accuracy": 0.5}
    assert os.listdir(tmp_path) == [path.name]


def test_a_figure_that_fails_midway_leaves_the_old_png_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "model.curves.png"
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5,
                "val_accuracy": 0.5}]
    plot_history(history, path)
    before = path.read_bytes()

    def half_then_full(self, file, **options):
        file.write(before[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", half_then_full)
    with pytest.raises(UserError, match="No space left on device"):
        plot_history(history * 2, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("content", [b"", b'{"settings": ', b"[1, 2]", b'{"settings": {}}',
                                     b"\xff\xfe"])
def test_tune_names_a_damaged_metrics_file_instead_of_a_json_traceback(tmp_path, content):
    path = tmp_path / "model.metrics.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{path} is damaged .*delete it and tune.py trains"):
        lenetkit.tuning.finished_run(path)


def signal_in_the_middle_of_writing(monkeypatch, signal_number: int, calls: list) -> None:
    """Makes torch.save's writes send `signal_number` to this process halfway (a Ctrl-C or kill
    landing in the zip writer), and counts the saves in `calls`."""
    real_save = torch.save

    class Interrupting:
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                signal.raise_signal(signal_number)
            return self.file.write(data)

        def flush(self):
            self.file.flush()

    def save(obj, file, *args, **kwargs):
        calls.append(1)
        real_save(obj, Interrupting(file) if len(calls) == 2 else file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_save_waits_until_the_file_is_whole_then_interrupts(tmp_path, monkeypatch,
                                                                                signal_number):
    previous = signal.signal(signal.SIGTERM, lenetkit.cli._interrupt)
    try:
        path, calls = tmp_path / "model.pth", []
        signal_in_the_middle_of_writing(monkeypatch, signal_number, calls)
        save_atomic({"epoch": 1}, path)
        with pytest.raises(KeyboardInterrupt):
            save_atomic({"epoch": 2, "weights": torch.zeros(1000)}, path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.load(path, weights_only=True)["epoch"] == 2  # the new file, whole
    assert os.listdir(tmp_path) == [path.name]


def test_ctrl_c_inside_the_checkpoint_save_ends_in_the_resume_line_not_a_zip_writer_error(
        tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "model.pth"
    signal_in_the_middle_of_writing(monkeypatch, signal.SIGINT, [])  # in epoch 2's checkpoint
    monkeypatch.setattr(sys, "argv", ["train.py", "--data-dir", str(tiny_data), "--out", str(out),
                                      "--epochs", "3", *TINY_TRAINING])
    resume_line = f"keeps epoch 2; continue with: python train.py --resume --out {out}"
    with pytest.raises(KeyboardInterrupt, match=resume_line):
        lenetkit.training.main()
    assert read_torch_file(out.with_suffix(".ckpt"))["history"][-1]["epoch"] == 2


def publish_as_real(monkeypatch, raw, dataset: str = "mnist") -> None:
    """Makes the tiny files in `raw` the known real ones for the test: their sizes and SHA-256s, and
    the MD5s of any .gz files there."""
    known = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
             for path in raw.glob("*-ubyte")}
    monkeypatch.setitem(lenetkit.datasets.IDX_SHA256, dataset, known)
    monkeypatch.setattr(lenetkit.datasets, "IDX_SIZES",
                        {name: (raw / name).stat().st_size for name in known})
    published = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in raw.glob("*.gz")}
    monkeypatch.setitem(lenetkit.datasets.IDX_MD5, dataset,
                        {**lenetkit.datasets.IDX_MD5[dataset], **published})


def alter_a_label(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("with_gz", [True, False], ids=["beside its .gz", "of the real size"])
def test_altered_labels_in_a_file_that_claims_to_be_the_real_one_are_refused(tmp_path, monkeypatch,
                                                                             with_gz):
    raw = write_mnist(tmp_path, train_count=30, test_count=20) / "MNIST" / "raw"
    labels = raw / "t10k-labels-idx1-ubyte"
    if with_gz:
        (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels.read_bytes()))
    publish_as_real(monkeypatch, raw)
    load_dataset(tmp_path, train=False, download=False)  # as published: read
    alter_a_label(labels)
    with pytest.raises(UserError, match=f"{labels} is altered or corrupt .*not the real file's"):
        load_dataset(tmp_path, train=False, download=False)


def test_a_file_of_another_size_with_no_gz_is_a_dataset_of_ones_own_and_is_read(tmp_path,
                                                                                monkeypatch):
    raw = write_mnist(tmp_path, train_count=30, test_count=20) / "MNIST" / "raw"
    publish_as_real(monkeypatch, raw)
    alter_a_label(raw / "t10k-labels-idx1-ubyte")
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))  # not the real size
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((19, 28, 28), dtype=np.uint8))
    images, labels = load_dataset(tmp_path, train=False, download=False)
    assert len(images) == len(labels) == 19


@needs_real_mnist
def test_the_real_labels_altered_or_swapped_for_fashions_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(REAL_DATA_DIR / "MNIST" / "raw" / name)
    load_dataset(tmp_path, train=False, download=False)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.unlink()
    labels.write_bytes((REAL_DATA_DIR / "MNIST" / "raw" / labels.name).read_bytes())
    alter_a_label(labels)
    with pytest.raises(UserError, match="altered or corrupt .*not the real file's.*fetch it again"):
        load_dataset(tmp_path, train=False, download=False)
    if REAL_FASHION_PRESENT:
        labels.write_bytes((REAL_DATA_DIR / "FashionMNIST" / "raw" / labels.name).read_bytes())
        with pytest.raises(UserError, match="it is fashion-mnist's file, not mnist's"):
            load_dataset(tmp_path, train=False, download=False)


def only_gz(tmp_path, monkeypatch):
    """A tiny dataset whose test split is only its .gz files (published for the test); its raw/."""
    raw = write_mnist(tmp_path, train_count=30, test_count=20) / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
    publish_as_real(monkeypatch, raw)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).unlink()
    return raw


def test_a_read_only_folder_of_gz_files_is_decompressed_in_memory(tmp_path, monkeypatch):
    raw = only_gz(tmp_path, monkeypatch)
    before = sorted(os.listdir(raw))

    def read_only_mount(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # a read-only mount's answer
    monkeypatch.setattr(lenetkit.outputs.tempfile, "mkstemp", read_only_mount)
    raw.chmod(0o555)  # and, for a user other than root, what a read-only folder answers
    try:
        images, labels = load_dataset(tmp_path, train=False, download=False)
    finally:
        raw.chmod(0o755)
    assert images.shape == (20, 28, 28) and len(labels) == 20
    assert sorted(os.listdir(raw)) == before


@pytest.mark.slow
def test_parallel_processes_decompressing_the_same_fresh_gz_all_succeed(tmp_path, monkeypatch):
    raw = only_gz(tmp_path, monkeypatch)
    published = lenetkit.datasets.IDX_MD5["mnist"]
    child = ("import sys; sys.path.insert(0, sys.argv[1]); from lenetkit import datasets;"
             "datasets.IDX_MD5['mnist'] = eval(sys.argv[3]);"
             "datasets.IDX_SHA256['mnist'] = eval(sys.argv[4]);"
             "images, _ = datasets.load_dataset(sys.argv[2], train=False, download=False);"
             "print(len(images))")
    arguments = [str(PROJECT_DIR), str(tmp_path), repr(published),
                 repr(lenetkit.datasets.IDX_SHA256["mnist"])]
    processes = [subprocess.Popen([sys.executable, "-c", child, *arguments], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0 and stdout.strip() == "20", stderr
    assert sorted(name for name in os.listdir(raw) if name.startswith("t10k")) == [
        "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte",
        "t10k-labels-idx1-ubyte.gz"]
    load_dataset(tmp_path, train=False, download=False)  # the kept files are whole: they pass


def test_evaluate_checks_where_its_figures_go_before_reading_anything(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_main("evaluate.py", "--model", tmp_path / "absent.pth",
                      "--out-dir", tmp_path / "a_file" / "figs", "--json", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: can't write {tmp_path / 'a_file' / 'figs'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_refuses_a_read_only_model_folder_before_scoring(tiny_model, tiny_data, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "model.pth").write_bytes(tiny_model.read_bytes())
    folder.chmod(0o555)
    try:
        result = run_main("evaluate.py", "--model", folder / "model.pth", "--data-dir", tiny_data,
                          "--json", check=False)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1 and "is not writable" in result.stderr and result.stdout == ""


def test_each_models_figures_get_their_own_names(tmp_path):
    (tmp_path / "a").mkdir()
    stems = figure_stems([tmp_path / "m.pth", tmp_path / "m.onnx"], None, "")
    assert [stem.name for stem in stems] == ["m.pth", "m.onnx", "ensemble"]
    stems = figure_stems([tmp_path / "a" / "m.pth", tmp_path / "m.pth"], tmp_path / "out", ".tta")
    assert [stem.name for stem in stems] == ["m-0.tta", "m-1.tta", "ensemble.tta"]
    assert [stem.name for stem in figure_stems([tmp_path / "m.pth"], None, "")] == ["m"]
    stems = figure_stems([tmp_path / "m.pth"] * 2, None, "")
    paths = [path for stem in stems for path in figure_paths(stem)]
    assert len(set(paths)) == len(paths) == 6
