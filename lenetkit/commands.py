"""The scripts' entry points: the root scripts' `main` and the console commands that `pip install`
makes. Each applies the thread policy's wait (threads.prepare_process) before anything imports
torch, since OpenMP reads it once, then runs the script's main under run_cli: so this module
imports nothing that imports torch."""

import importlib

from lenetkit.threads import prepare_process

# Each command and the package module whose main it runs.
MODULES = {"train": "training", "evaluate": "evaluation", "predict": "prediction",
           "serve": "server", "tune": "tuning", "save": "export"}


def run(command: str) -> None:
    """The command's main, as a script runs it."""
    prepare_process()
    from lenetkit.cli import run_cli  # imports torch

    run_cli(importlib.import_module(f"lenetkit.{MODULES[command]}").main)


def train() -> None:
    run("train")


def evaluate() -> None:
    run("evaluate")


def predict() -> None:
    run("predict")


def serve() -> None:
    run("serve")


def tune() -> None:
    run("tune")


def save() -> None:
    run("save")
