"""Draw a digit and watch it read: a local web page, and the HTTP API it uses.

    python serve.py [--model mnist_model.pth] [--host 127.0.0.1] [--port 8000] [--workers N]

Open the address it prints. The page (static/) has a canvas to draw on, a photo picker, and the
model's answer: the class, its probability, a bar for each class and the image it saw (28x28, or
32x32 in colour for a CIFAR-10 model).

    GET  /          the page
    GET  /health    {"status": "ok", "model": ..., "dataset": ..., "classes": [...]}
    POST /predict   body: an image file's bytes (PNG, JPEG, anything Pillow reads), or a
                    multipart form holding one file; answers {"label", "name", "probability",
                    "confident", "top" (every class, likeliest first), "input" (the model's
                    image as a PNG data URL), "milliseconds" (the server's time)}

    curl --data-binary @examples/seven.png http://127.0.0.1:8000/predict

A request the server can't answer gets a 4xx (or a 503 when it is busy) and {"error": "..."}.
Images go through load_model.Predictor, as `python load_model.py` reads them.

The server is the standard library's ThreadingHTTPServer: one user's page and local scripts need
no more, and a web framework would be a dependency for routing three paths. It has no TLS and no
authentication, so it listens on localhost unless --host says otherwise.

Images are read in the server's own threads, or with --workers in worker processes (workers.py):
the preprocessing holds Python's GIL, so only processes can read several images on several cores
at once, but handing each image to a process and back costs CPU time of its own. Which is faster
depends on the cores to spare: docs/serving.md has the figures.
"""

import argparse
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from lenetkit.cli import MODEL_HELP, int_in_range, make_parser
from lenetkit.environment import PACKAGE_DIR
from lenetkit.errors import UserError
from lenetkit.preprocess import ImageError
from lenetkit.workers import Model

STATIC_DIR = PACKAGE_DIR / "static"
# The page's files by path: nothing else on disk is ever served.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
ROUTES = {**{path: "GET" for path in STATIC}, "/health": "GET", "/predict": "POST"}
# A phone photo is a few megabytes; a larger body is refused before it is read.
MAX_BODY_BYTES = 8 * 2**20
# Connections served at once; more are answered 503 at once, so that a flood can't start
# unbounded threads. Browsers open at most six to one server.
MAX_CONNECTIONS = 32
# A client that sends nothing for this long is dropped, and its thread freed.
CLIENT_TIMEOUT_S = 10.0
# A body must arrive whole within this time, however slowly its bytes trickle in.
BODY_DEADLINE_S = 30.0
# The page only loads from this server; it fetches from it and shows data: images.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class RequestError(Exception):
    """A request the server refuses: its HTTP status, a one-line reason, and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def form_file(body: bytes, content_type: str) -> bytes:
    """The first file in a multipart/form-data body (as `curl -F image=@digit.png` sends)."""
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    if message.is_multipart():
        for part in message.iter_parts():
            if part.get_filename() is not None:
                payload = part.get_payload(decode=True)  # None when the part is empty
                return payload if isinstance(payload, bytes) else b""
    raise RequestError(400, "the form holds no file: send the image as a file field "
                            "(curl -F image=@digit.png), or the file's bytes as the body")


class Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, so that the page and scripts reuse it."""

    protocol_version = "HTTP/1.1"
    server_version = "mnist-pipeline-serve"
    # Headers and body go out as two writes: without this, a kept-alive connection can wait
    # for the client's delayed acknowledgement between them.
    disable_nagle_algorithm = True
    server: "Server"

    def setup(self) -> None:
        # The socket's timeout, for slow clients: StreamRequestHandler.setup reads self.timeout, so
        # an instance's own serves.
        self.timeout = self.server.client_timeout  # type: ignore[misc]  # a ClassVar in typeshed
        super().setup()

    def do_GET(self) -> None:
        self.route()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def route(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path not in ROUTES:
                raise RequestError(404, f"no such path: {path} (the API is GET /health and "
                                        "POST /predict; the page is at /)")
            if self.command != ROUTES[path]:
                raise RequestError(405, f"{self.command} is not allowed on {path}: use "
                                        f"{ROUTES[path]}", {"Allow": ROUTES[path]})
            if path == "/predict":
                self.send_json(200, self.server.model.predict(self.image_file()))
            elif path == "/health":
                self.send_json(200, {**self.server.model.info(), "max_body_bytes": MAX_BODY_BYTES})
            else:
                self.send_static(*STATIC[path])
        except RequestError as error:
            self.send_json(error.status, {"error": str(error)}, error.headers)
        except ImageError as error:
            self.send_json(400, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 -- one request's failure must not stop the server
            self.log_error("%s", f"{self.command} {path}: {type(error).__name__}: {error}")
            self.send_json(500, {"error": f"the server failed ({type(error).__name__}: {error})"})

    def image_file(self) -> bytes:
        """The request's image file: its body, or the file in its multipart form. The length is
        checked before anything is read."""
        if "Transfer-Encoding" in self.headers:
            raise RequestError(411, "send the image with a Content-Length (chunked transfer "
                                    "encoding is not supported)")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise RequestError(411, "the request has no Content-Length: send the image file's "
                                    "bytes as the body, with their length")
        if len(set(lengths)) > 1 or not re.fullmatch(r"[0-9]{1,20}", lengths[0].strip()):
            raise RequestError(400, f"Content-Length is not one number of bytes: {lengths}")
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"the body is {length:,} bytes, over the limit of "
                                    f"{MAX_BODY_BYTES:,}: send a smaller image")
        if length == 0:
            raise RequestError(400, "the body is empty: send an image file's bytes "
                                    "(PNG, JPEG, ...)")
        body = self.read_body(length)
        if self.headers.get_content_type() == "multipart/form-data":
            body = form_file(body, self.headers["Content-Type"])
        return body

    def read_body(self, length: int) -> bytes:
        """`length` bytes of body, which must all arrive within the server's body deadline."""
        deadline, chunks, left = time.monotonic() + self.server.body_deadline, [], length
        try:
            while left:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(left, 2**16))
                if not chunk:
                    raise RequestError(400, f"the body ended after {length - left:,} of its "
                                            f"{length:,} bytes")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            raise RequestError(408, f"the body came too slowly ({length - left:,} of "
                                    f"{length:,} bytes arrived)") from None
        return b"".join(chunks)

    def send_static(self, name: str, content_type: str) -> None:
        self.send_body(200, self.server.static[name], content_type, {"Cache-Control": "no-cache"})

    def send_json(self, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
        """Answers with JSON; after an error the connection closes, as a body may be unread."""
        if status >= 400:
            self.close_connection = True
            headers = {**(headers or {}), "Connection": "close"}
        self.send_body(status, json.dumps(content).encode(), "application/json",
                       {"Cache-Control": "no-store", **(headers or {})})

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                            **SECURITY_HEADERS, **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method, headers too
        long) in the API's form: one line of JSON."""
        self.log_error("code %d, message %s", code, message)
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, HTTPStatus):
            code = code.value
        if isinstance(code, int) and code >= 400:  # answers are logged only when refused
            super().log_request(code, size)


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on the connections served at once: one more is answered
    503 by the accepting thread itself, and closed."""

    daemon_threads = True
    request_queue_size = 64
    server_address: tuple[str, int] | tuple[str, int, int, int]  # IPv4's, or IPv6's

    def __init__(self, address: tuple[str, int], model: Model,
                 max_connections: int = MAX_CONNECTIONS, client_timeout: float = CLIENT_TIMEOUT_S,
                 body_deadline: float = BODY_DEADLINE_S) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.model, self.client_timeout, self.body_deadline = model, client_timeout, body_deadline
        self.slots = threading.BoundedSemaphore(max_connections)
        self.held: set[socket.socket] = set()  # the connections holding a slot
        self.held_lock = threading.Lock()
        self.static = page_files()
        super().__init__(address, Handler)

    # A TCP server's requests are sockets: typeshed's type also has a UDP server's (bytes, socket).
    def process_request(  # type: ignore[override]  # a socket: see above
            self, request: socket.socket, client_address: tuple) -> None:
        if not self.slots.acquire(blocking=False):
            refuse(request)
            self.shutdown_request(request)
            return
        with self.held_lock:
            self.held.add(request)
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:  # e.g. a Ctrl-C, which can land after the thread has started
            self.release(request)
            raise

    def process_request_thread(  # type: ignore[override]  # a socket: see above
            self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.release(request)

    def release(self, request: socket.socket) -> None:
        """Frees the slot of `request`'s connection, once, whichever of its thread and
        process_request gets here first."""
        with self.held_lock:
            if request in self.held:
                self.held.remove(request)
                self.slots.release()


def page_files() -> dict[str, bytes]:
    """The page's files by name, read once."""
    try:
        return {name: (STATIC_DIR / name).read_bytes() for name, _ in STATIC.values()}
    except OSError as error:
        raise UserError(f"the page's files are not in {STATIC_DIR} ({error})") from None


BUSY = json.dumps({"error": "the server is busy: try again in a moment"}).encode()
BUSY_RESPONSE = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                 ).encode() + BUSY


def refuse(connection: socket.socket) -> None:
    """Answers 503 on a connection no thread will serve. The request is read first where it has
    already arrived: closing a socket with unread data resets it, which can lose the answer."""
    try:
        connection.settimeout(0.05)
        try:
            connection.recv(2**16)
        except TimeoutError:
            pass
        connection.sendall(BUSY_RESPONSE)
    except OSError:
        pass  # the client is gone: nothing to tell it


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
    """A server for `model` listening on host:port (not yet serving), or a UserError saying why
    it can't listen there."""
    try:
        return Server((host, port), model, **limits)
    except (OSError, OverflowError) as error:  # in use, not an address of this machine, ...
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"can't listen on {host} port {port} ({reason})") from None


def address_url(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One request's network is too small to gain from several threads; the cores serve
    # concurrent requests instead.
    torch.set_num_threads(1)
    with Model(args.model, args.workers) as model:
        server = start_server(model, args.host, args.port)
        print(f"serving {model.path} ({model.predictor.record['dataset']}) at "
              f"{address_url(server)}", flush=True)
        if not is_loopback(args.host):
            print(f"note: listening on {args.host}: other machines can reach it (no TLS, no "
                  "password)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
