"""Writing output files: one check of an output path, one atomic writer for every file written.

Every model, checkpoint, JSON report and figure goes through `write_atomic`, so a crash, a full disk
or a Ctrl-C leaves either the old file or the new one, whole; and every output path goes through
`check_output_file`, so nothing but a regular file (or nothing) is ever replaced.
"""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import torch

from lenetkit.environment import PROJECT_DIR
from lenetkit.errors import UserError

if TYPE_CHECKING:  # for the annotations only: matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What signal.getsignal returns: a Python handler, SIG_DFL or SIG_IGN, or None (one set outside
# Python).
SignalHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def check_output_folder(folder: str | Path, written: str | Path | None = None) -> Path:
    """`folder` if files can be written into it: it, or the nearest folder above it that exists
    (the rest is made when written), is a folder and is writable. Errors name `written`, the
    file to be written there, when given."""
    folder = nearest = Path(folder)
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UserError(f"can't write {written or folder}: {nearest} is not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UserError(f"can't write {written or folder}: {nearest} is not writable")
    return folder


def check_output_file(path: str | Path) -> Path:
    """`path` if a file can be written there: its folder exists (or can be made) and is writable,
    and what is there now, if anything, is a regular file. A folder, a symbolic link (writing
    would replace the link, not its target), a device, a pipe or a socket is refused."""
    path = Path(path)
    check_output_folder(path.parent, path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as error:
        raise UserError(f"can't write {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a folder; give a file name")
    if stat.S_ISLNK(mode):
        raise UserError(f"{path} is a symbolic link; writing would replace the link, not its "
                        f"target: give the target's own path ({path.resolve()})")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is not a regular file (a device, pipe or socket); "
                        "refusing to replace it")
    return path


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file beside `path`, flushed to disk, then renamed over `path`: a
    crash at any moment leaves either the old file or the new one, whole. Ctrl-C and SIGTERM wait
    until the file is in place (a signal landing inside a writer such as torch.save's would
    otherwise surface as that writer's own error). A write that fails (a full disk) is a
    UserError naming the file."""
    path = check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    except OSError as error:
        raise UserError(f"can't write {path}: {error.strerror or error}") from None
    try:
        with signals_deferred():
            with os.fdopen(handle, "wb") as file:
                os.chmod(temporary, _file_mode(path))  # mkstemp's is private: keep the usual
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _sync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"can't write {path}: {error.strerror or error}") from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """A text file (UTF-8), atomically."""
    write_atomic(path, lambda file: file.write(text.encode()))


def write_json(path: str | Path, content: object) -> None:
    """A JSON file, indented, atomically."""
    write_text(path, json.dumps(content, indent=2) + "\n")


def save_figure(figure: "Figure", path: str | Path) -> None:
    """A matplotlib figure as a PNG, atomically."""
    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=100))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM until the block ends, then acts on the first one that came, as its
    handler would have (Ctrl-C raises KeyboardInterrupt after the block, not inside it). Only the
    main thread can set handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, SignalHandler] = {number: signal.getsignal(number)
                                          for number in DEFERRED_SIGNALS}
    for number, handler in previous.items():
        if handler is not None:  # None: a handler set outside Python, left alone
            signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        if received:
            _deliver(received[0], previous[received[0]])


def _deliver(number: int, handler: SignalHandler) -> None:
    """Acts on a held signal as `handler` (what was installed before) would have."""
    if callable(handler):
        handler(number, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(number)  # the default action: for SIGTERM, the end of the process


def _file_mode(path: Path) -> int:
    """The replaced file's permissions, or those a new file gets under the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable (POSIX; elsewhere there is no folder to open)."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def git_commit() -> str | None:
    """The commit of the code that is running, with `+dirty` when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_DIR, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_metadata() -> dict:
    """Where a result came from: the command line, the code's commit, the date and the torch
    version."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
    }
