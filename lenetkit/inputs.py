"""Reading input files: one check of every file the project reads from elsewhere (an image, a
recipe, a dataset file, a model file) before a byte of it is read, and a JSON parser whose nesting
is bounded.

Only a regular file is read (a symbolic link to one is followed): a named pipe would block the
reader until another process writes to it, and a device such as /dev/zero never ends. Its size is
held to what its format allows before it is read, so that a huge file (a sparse one costs no disk)
is one line, not a MemoryError. outputs.py checks the files that are written.
"""

import json
import os
import re
import stat
from pathlib import Path

from lenetkit.errors import UserError

# A JSON string, escapes included: brackets inside strings don't nest anything.
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# What each kind of special file is, for the one line that refuses it.
SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_input_file(path: str | Path, limit: int, what: str,
                     error: type[UserError] = UserError, named: bool = True) -> int:
    """The size of `path` when it is a regular file of at most `limit` bytes, which `what` (say,
    "a recipe") can be; else `error`, one line that names the path (unless not `named`, for
    callers that name it themselves): a missing file, a folder, a special file or a file too
    large."""
    subject = str(path) if named else "the file"
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise error(f"no file at {path}" if named else "no such file") from None
    except OSError as problem:
        raise error(f"can't read {subject}: {problem.strerror or problem}") from None
    if stat.S_ISDIR(status.st_mode):
        raise error(f"{subject} is a folder, not {what}")
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in SPECIAL_FILES if test(status.st_mode)), "special")
        raise error(f"{subject} is {kind}, not a regular file: refusing to read it as {what}")
    if status.st_size > limit:
        raise error(f"{subject} is {status.st_size:,} bytes, more than {what} can be "
                    f"({limit:,} bytes at most)")
    return status.st_size


def read_input_bytes(path: str | Path, limit: int, what: str,
                     error: type[UserError] = UserError) -> bytes:
    """The content of `path`, checked first (check_input_file); at most `limit` bytes are read,
    even from a file that grows meanwhile."""
    check_input_file(path, limit, what, error)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as problem:
        raise error(f"can't read {path}: {problem.strerror or problem}") from None
    if len(data) > limit:
        raise error(f"{path} grew past {limit:,} bytes while it was read: more than {what} "
                    "can be")
    return data


def parse_json(text: str, most_nesting: int) -> object:
    """The value in a JSON text whose arrays and objects nest at most `most_nesting` deep; a
    ValueError (json's own for a syntax error) otherwise. The depth is counted before parsing:
    json's parser recurses, and a deep enough text would end in a RecursionError."""
    depth = deepest = 0
    for bracket in JSON_STRING.sub("", text):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in "]}":
            depth -= 1
    if deepest > most_nesting:
        raise ValueError(f"its arrays and objects nest {deepest:,} deep, more than the "
                         f"{most_nesting} allowed")
    return json.loads(text)
