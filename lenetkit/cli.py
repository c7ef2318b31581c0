"""What every script shares: the project's paths, the command line (its parser, argument types
and one-line errors) and the choice of device."""

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenetkit.environment import PROJECT_DIR
from lenetkit.errors import UserError
from lenetkit.outputs import check_output_file, check_output_folder

DEVICE_HELP = "where the model runs: auto (cuda, then mps, then cpu), cuda, mps or cpu"
DATA_HELP = "dataset root holding MNIST/raw/, FashionMNIST/raw/ and cifar-10-batches-bin/"
MODEL_DEFAULT = ("(default: mnist_model.pth once you have trained one, "
                 "else pretrained/mnist_model.pth)")
MODEL_HELP = f"model file {MODEL_DEFAULT}"


def run_cli(main: Callable[[], None]) -> None:
    """Runs a script's main(): a UserError becomes `error: ...` on stderr and exit status 1;
    Ctrl-C or SIGTERM becomes `interrupted` (with what to do next, if main says) and status 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
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
    """Shows each default once: not where the help already says it, nor for options that are off
    by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, Path) and default.is_relative_to(PROJECT_DIR):
            default = default.relative_to(PROJECT_DIR)
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def make_parser(description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Every script's parser: defaults shown once, and no abbreviated flags (so that `--seed` can
    never be taken for another flag that starts the same)."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                   allow_abbrev=False, **kwargs)


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


