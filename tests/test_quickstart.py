"""The README's two commands, in their order, on a copy of the project: training leaves every
tracked file as it was, so the tests that check the shipped model still hold afterwards."""

import hashlib
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR, REAL_MNIST_PRESENT, TINY_TRAINING

git = shutil.which("git")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    git is None or not (PROJECT_DIR / ".git").exists(), reason="needs git and a git checkout")]


def run(folder, *command: str) -> str:
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def project_copy(tmp_path):
    """The project's tracked files as they are in the working tree, committed in a new
    repository."""
    copy = tmp_path / "project"
    tracked = run(PROJECT_DIR, git, "ls-files", "-z").split("\0")
    for name in filter(None, tracked):
        if (PROJECT_DIR / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / name, copy / name)
    run(copy, git, "init", "-q")
    run(copy, git, "add", "-A")
    run(copy, git, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm",
        "copy")
    return copy


def test_training_with_the_defaults_then_testing_leaves_git_status_clean(project_copy, tiny_data):
    shipped = project_copy / "lenetkit" / "pretrained" / "mnist_model.pth"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    # `make train` runs train.py with its defaults; only the data (tiny) and its size differ here.
    run(project_copy, sys.executable, "train.py", "--data-dir", str(tiny_data), "--epochs", "1",
        *TINY_TRAINING)
    assert (project_copy / "mnist_model.pth").is_file()
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    assert run(project_copy, git, "status", "--porcelain", "--untracked-files=all") == ""
    # The scripts now default to the model just trained; the shipped one stays where it was.
    # (evaluate.py runs beside `make test`'s check: each is mostly a Python importing torch.)
    evaluating = subprocess.Popen([sys.executable, "evaluate.py", "--data-dir", str(tiny_data),
                                   "--no-download"], cwd=project_copy, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    if REAL_MNIST_PRESENT:  # `make test`'s check of the shipped model, after that training
        (project_copy / "data" / "MNIST").symlink_to(PROJECT_DIR / "data" / "MNIST")
        run(project_copy, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_real_mnist.py::test_the_committed_model_scores_what_the_readme_says")
    evaluated, errors = evaluating.communicate()
    assert evaluating.returncode == 0, errors
    assert f"model: {project_copy / 'mnist_model.pth'}" in evaluated
    assert run(project_copy, git, "status", "--porcelain", "--untracked-files=all") == ""
