"""Draw a digit and watch it read: a local web page, and the HTTP API it uses.

    python serve.py [--model mnist_model.pth] [--host 127.0.0.1] [--port 8000] [--workers N]

Open the address it prints. The page (static/) has a canvas to draw on, a photo picker, and the
model's answer: the class, its probability, a bar for each class and the image it saw (28x28, or
32x32 in colour for a CIFAR-10 model).

    GET  /              the page
    GET  /health        {"status": "ok", "model": ..., "dataset": ..., "classes": [...]}
    POST /predict       body: an image file's bytes (PNG, JPEG, anything Pillow reads), or a
                        multipart form holding one file; answers {"label", "name", "probability",
                        "confident", "is_digit", "digit_score", "top" (every class, likeliest
                        first), "input" (the model's image as a PNG data URL), "milliseconds"
                        (the server's time)}; for an MNIST model, also "number" (its digits left
                        to right) and "digits" (each one's name and probability), the first
                        digit's answer at the top level
    GET  /openapi.json  the API's OpenAPI description

    curl --data-binary @examples/seven.png http://127.0.0.1:8000/predict

A request the server can't answer gets a 4xx (or a 503 when it is busy) and {"error": "..."}.
Images go through load_model.Predictor, as `python load_model.py` reads them.

The server is FastAPI (webapp.py) on uvicorn, the web stack most Python APIs are served with,
with their limits set (limits.py) and what uvicorn leaves out added (connections.py): a deadline
for each request's headers, a bound on connections, refusals in JSON. Other machines may reach
it, but it has no TLS and no authentication, so it listens on localhost unless --host says
otherwise.

Images are read off the event loop, in the server's threads or with --workers in worker
processes (workers.py), each within a time limit: the preprocessing holds Python's GIL, so only
processes can read several images on several cores at once, but handing each image to a process
and back costs CPU time of its own. Which is faster depends on the cores to spare:
docs/serving.md has the figures.
"""

import argparse
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from lenetkit.cli import MODEL_HELP, int_in_range, make_parser
from lenetkit.connections import uvicorn_config
from lenetkit.errors import UserError
from lenetkit.limits import Limits
from lenetkit.modelchoice import model_line
from lenetkit.threads import SERVING_THREADS, use_threads
from lenetkit.webapp import create_app
from lenetkit.workers import Model

__all__ = ["Limits", "Model", "Server", "main", "start_server"]


class ReadyServer(uvicorn.Server):
    """uvicorn's server, calling `ready` (when set) once it serves: from then on it handles
    Ctrl-C itself. A Ctrl-C while its event loop was still being built left a half-made loop,
    whose clean-up printed a traceback after `interrupted`."""

    ready: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready is not None and not self.should_exit:
            self.ready()


class Server:
    """uvicorn serving the API for a model on a socket bound at once (so that a port in use is
    known before serving), in the calling thread until shutdown()."""

    def __init__(self, model: Model, host: str, port: int, limits: Limits) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # TCP named: asyncio sets TCP_NODELAY only on connections of such sockets, and without it
        # a kept-alive connection's answer (head, then body) waits for the client's delayed ACK.
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(128)
        except BaseException:
            self.socket.close()
            raise
        self.server_address: tuple = self.socket.getsockname()
        self.uvicorn = ReadyServer(uvicorn_config(create_app(model, limits), limits))
        self.stopped = threading.Event()

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serves until shutdown(), or Ctrl-C or SIGTERM in the main thread (which uvicorn
        raises again once it has stopped serving); `ready` is called once it serves."""
        self.uvicorn.ready = ready
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        """Stops serve_forever (from another thread), and waits until it has stopped."""
        self.uvicorn.should_exit = True
        self.stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def port(text: str) -> int:
    """A TCP port: 1 to 65535, or 0 for any free one."""
    return int_in_range(text, 0, 65535)


def worker_count(text: str) -> int:
    """How many worker processes: 0 (none) to 256."""
    return int_in_range(text, 0, 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0] + " Stop it with Ctrl-C.")
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 0.0.0.0 (or ::) lets other machines in")
    parser.add_argument("--port", type=port, default=8000,
                        help="port to listen on (0: any free one)")
    parser.add_argument("--workers", type=worker_count, default=0,
                        help="worker processes that read the images, each with the model loaded "
                             "(0: the server's own threads read them; see docs/serving.md)")
    return parser.parse_args(argv)  # no --model: Model takes load_model's default


def start_server(model: Model, host: str, port: int, **limits: Any) -> Server:
    """A server for `model` listening on host:port (not yet serving) within Limits(**limits), or
    a UserError saying why it can't listen there."""
    try:
        return Server(model, host, port, Limits(**limits))
    except (OSError, OverflowError) as error:  # in use, not an address of this machine, ...
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"can't listen on {host} port {port} ({reason})") from None


def address_url(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: a loopback address in any of its spellings
    (127.1, an IPv4-mapped ::ffff:127.0.0.1, ...), or localhost."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        try:  # the shorthands that the C library, and so bind(), accepts: 127.1, 2130706433
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def log_to_terminal() -> None:
    """The server's problems (and uvicorn's), one line each, on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("lenetkit.server", "uvicorn"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_threads(SERVING_THREADS)  # whatever the environment says: see SERVING_THREADS
    log_to_terminal()
    with Model(args.model, args.workers) as model:
        server = start_server(model, args.host, args.port)

        def ready() -> None:
            print(f"serving at {address_url(server)}; "
                  f"{model_line(model.path, model.predictor.record)}", flush=True)
            if not is_loopback(server.server_address[0]):
                print(f"note: listening on {args.host}: other machines can reach it (no TLS, no "
                      "password)", file=sys.stderr, flush=True)

        try:
            server.serve_forever(ready)
        finally:
            server.server_close()
