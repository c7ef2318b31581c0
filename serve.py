"""Serve the model over HTTP: a drawing page at /, POST /predict, GET /health.

    python serve.py [--model mnist_model.pth] [--port 8000] [--workers N]

The library behind it: lenetkit.server."""

from lenetkit.cli import run_cli
from lenetkit.server import main

if __name__ == "__main__":
    run_cli(main)
