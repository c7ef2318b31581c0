"""What every script shares: the project's paths, the command line (its parser, argument types
and one-line errors) and the choice of device."""

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenetkit import __version__
from lenetkit.environment import DEFAULT_DATA_DIR, PROJECT_DIR
from lenetkit.errors import UserError
from lenetkit.outputs import check_output_file, check_output_folder
from lenetkit.threads import MAX_THREADS

DEVICE_HELP = "where the model runs: auto takes cuda, then mps, then cpu; cuda:N names a GPU"
DATA_HELP = "dataset root holding MNIST/raw/, FashionMNIST/raw/ and cifar-10-batches-bin/"
MODEL_DEFAULT = ("(default: mnist_model.pth once you have trained one, "
                 "else pretrained/mnist_model.pth)")
MODEL_HELP = f"model file {MODEL_DEFAULT}"


def run_cli(main: Callable[[], None]) -> None:
    """Runs a script's main(): a UserError becomes `error: ...` on stderr and exit status 1;
    Ctrl-C or SIGTERM becomes `interrupted` (with what to do next, if main says) and status 130;
    a reader that stops reading (`| head`) ends it quietly, with a shell's status 141."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except BrokenPipeError:  # `script | head` stopped reading: as quiet as a shell's own tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        sys.exit(141)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        print(f"interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a polite kill gets the same clean exit as Ctrl-C


def checked_output(check: Callable[[str], Path]) -> Callable[[str], Path]:
    """argparse's type for an output path: `check`'s verdict (outputs.py), before any work."""
    def output_path(text: str) -> Path:
        try:
            return check(text)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return output_path


writable_file = checked_output(check_output_file)
writable_folder = checked_output(check_output_folder)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once, in one way: not where the help already says it, nor for the
    switches that are off unless given; `on`/`off` for the flags that have a --no- form; a path
    in the project as a user finds it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction):
            default = "on" if default else "off"
        if default is None or default is False or default == argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, Path) and default.is_relative_to(PROJECT_DIR):
            default = f"{default.relative_to(PROJECT_DIR)} in the project folder"
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def make_parser(description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Every script's parser: defaults shown once, --version, and no abbreviated flags (so that
    `--seed` can never be taken for another flag that starts the same)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                     allow_abbrev=False, **kwargs)
    parser.add_argument("--version", action="version", version=f"lenetkit {__version__}")
    return parser


def add_device(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device and --threads, the same on every script."""
    parser.add_argument("--device", default="auto", metavar="{auto,cuda,mps,cpu}",
                        help=DEVICE_HELP)
    parser.add_argument("--threads", type=lambda text: int_in_range(text, 1, MAX_THREADS),
                        metavar="N",
                        help="CPU threads to compute on (default: OMP_NUM_THREADS if set, else "
                             "one a core this process may use, fewer when other programs keep "
                             "those cores busy)")


def add_data_dir(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                 use: str = "") -> None:
    """--data-dir, the same on every script; `use` says what a script reads there, if not a
    dataset to train or score on."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=DATA_HELP + (f" ({use})" if use else ""))


def positive_int(text: str) -> int:
    return int_in_range(text, 1, None)


def non_negative_int(text: str) -> int:
    return int_in_range(text, 0, None)


def int_in_range(text: str, low: int, high: int | None) -> int:
    """An integer from `low` to `high` (no upper bound when None), as argparse's type check."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low:,} to {high:,}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text}")
    return value


# More passes than any recipe needs by far: a recipe from elsewhere can't ask to train forever.
MAX_EPOCHS = 10_000


def epoch_count(text: str) -> int:
    """A number of passes over the data: 1 to MAX_EPOCHS."""
    return int_in_range(text, 1, MAX_EPOCHS)


def seed(text: str) -> int:
    """A random seed torch accepts: 0 to 2**64 - 1."""
    return int_in_range(text, 0, 2**64 - 1)


def fraction(text: str) -> float:
    """A number from 0 up to, not including, 1."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def positive_float(text: str) -> float:
    return _finite_float(text, allow_zero=False)


def non_negative_float(text: str) -> float:
    return _finite_float(text, allow_zero=True)


def _finite_float(text: str, allow_zero: bool) -> float:
    wanted = "a number >= 0" if allow_zero else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


