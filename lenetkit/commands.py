"""The console commands that `pip install` makes: each runs a script's main as the script does."""

import importlib

from lenetkit.cli import run_cli


def _run(module: str) -> None:
    run_cli(importlib.import_module(f"lenetkit.{module}").main)


def train() -> None:
    _run("training")


def evaluate() -> None:
    _run("evaluation")


def predict() -> None:
    _run("prediction")


def serve() -> None:
    _run("server")
