"""Serve the model over HTTP: a drawing page at /, POST /predict, GET /health.

    python serve.py [--model mnist_model.pth] [--port 8000] [--workers N]

The library behind it: lenetkit.server."""

from lenetkit.commands import serve as main  # the thread policy, then the script's main

if __name__ == "__main__":
    main()
