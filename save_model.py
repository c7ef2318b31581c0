"""Write model files, atomically.

    python save_model.py SRC [--out mnist_model.pth]

turns a training checkpoint (or a model file) into a lean model file: the best
weights and their description, without optimizer state or history. train.py
calls the same `save_model` at the end of every run.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from common import DEFAULT_MODEL_PATH, PROJECT_DIR, run_cli, writable_file
from load_model import FORMAT_VERSION, MODEL_FORMAT, MODEL_KEYS, read_model_file


def save_atomic(obj: object, path: str | Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over
    `path`: a crash at any moment leaves either the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, _file_mode(path))  # mkstemp makes it private; keep the usual permissions
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _file_mode(path: Path) -> int:
    """The replaced file's permissions, or those a new file gets under the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def git_commit() -> str | None:
    """The commit of the code that is running, with `+dirty` when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_DIR,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_metadata() -> dict:
    """Where a result came from: the command line, the code's commit, the date and the torch version."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
    }


def model_record(model: nn.Module, arch: str, model_args: dict, normalization: dict,
                 classes: list[str], metadata: dict) -> dict:
    """A model file's content: plain types and CPU tensors only, so weights_only loading works."""
    return {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "model_args": dict(model_args),
        "state_dict": {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()},
        "normalization": dict(normalization),
        "classes": list(classes),
        "metadata": dict(metadata),
    }


def save_model(record: dict, path: str | Path) -> None:
    """Writes a model record as a lean model file (only the keys a model file holds)."""
    lean = {key: record[key] for key in ("format", "version", *MODEL_KEYS)}
    save_atomic(lean, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the lean model file (weights and metadata) from a training checkpoint or a model file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", type=Path, metavar="SRC", help="training checkpoint (.ckpt) or model file")
    parser.add_argument("--out", type=writable_file, default=DEFAULT_MODEL_PATH, help="model file to write")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    record = read_model_file(args.source)
    save_model(record, args.out)
    metadata = record["metadata"]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB): {record['arch']}, "
          f"validation accuracy {metadata.get('val_accuracy', float('nan')):.2%} "
          f"at epoch {metadata.get('best_epoch')} of {metadata.get('epochs')}")


if __name__ == "__main__":
    run_cli(main)
