"""Measure serve.py as its page uses it: the server's time to read one drawing, and predictions
a second with several clients at once, over this machine's loopback.

    python bench_serve.py [--model FILE] [--workers N] [--clients 8] [--requests 2000]
                          [--seconds 60]
    python bench_serve.py --flood [--seconds 30]

With --flood it measures instead how the server holds under the worst inputs (hostile.py), all
sent at once: /health and a normal /predict are timed throughout while other clients send
scan-heavy JPEGs, multipart bombs and deeply nested forms as fast as they are refused, and slow
clients send requests' heads a byte a second.

serve.py runs in a child process on a free port of 127.0.0.1. The requests are the first 100
MNIST test digits traced as pen strokes, as the page draws and sends them (drawings.py). Other
work on the machine slows the server: the load average is printed before and after the run.
"""

import argparse
import http.client
import itertools
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lenetkit.cli import MODEL_HELP, make_parser, positive_int, run_cli
from lenetkit.datasets import load_dataset
from lenetkit.environment import DEFAULT_DATA_DIR, PROJECT_DIR
from lenetkit.errors import UserError
from lenetkit.limits import Limits
from lenetkit.server import worker_count

import drawings
import hostile

DRAWINGS = 100
SEVEN = PROJECT_DIR / "examples" / "seven.png"
SLOW_CLIENTS = 40


def cpu_name() -> str:
    """The CPU's model name, as lscpu gives it."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s*(.+)$", listing, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


class ServerProcess:
    """`python serve.py --port 0` in a child process, until the block ends: its host and port."""

    def __init__(self, model: Path | None, workers: int | None = None) -> None:
        self.command = [sys.executable, str(PROJECT_DIR / "serve.py"), "--port", "0",
                        *(["--model", str(model)] if model else []),
                        *(["--workers", str(workers)] if workers is not None else [])]

    def __enter__(self) -> tuple[str, int]:
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe full stops it
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        line = self.process.stdout.readline()
        found = re.search(r" at http://([^/]+):(\d+)/", line)
        if not found:
            self.__exit__()
            self.log.seek(0)
            raise UserError(f"serve.py did not start: {self.log.read().strip() or line}")
        return found.group(1), int(found.group(2))

    def __exit__(self, *exception) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process.stdout.close()


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def latency(address: tuple[str, int], bodies: list[bytes], labels: list[int], calls: int) -> dict:
    """One client's requests one after another: the server's own time for each (from its
    answer) and the round trip, in ms; and how many of the drawings were read right."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    server, round_trip, right = [], [], 0
    for index in range(-10, calls):  # the first 10: a warm-up
        body, label = bodies[index % len(bodies)], labels[index % len(bodies)]
        started = time.perf_counter()
        status, answer = post(connection, body)
        if status != 200:
            raise UserError(f"the server refused a drawing ({status}: {answer.get('error')})")
        if index >= 0:
            round_trip.append(1000 * (time.perf_counter() - started))
            server.append(answer["milliseconds"])
            right += index < len(bodies) and answer["label"] == label
    connection.close()
    quantile = lambda values, q: statistics.quantiles(values, n=100)[q - 1]
    return {"right": right, "drawings": min(calls, len(bodies)),
            "server_median": statistics.median(server), "server_p90": quantile(server, 90),
            "round_trip_median": statistics.median(round_trip),
            "round_trip_p90": quantile(round_trip, 90)}


def throughput(address: tuple[str, int], bodies: list[bytes], clients: int, requests: int,
               seconds: float) -> dict:
    """`clients` clients, each on its own connection, sending drawings as fast as answers come,
    until `requests` are sent or `seconds` have passed: answers a second, by status."""
    numbers, statuses, lock = itertools.count(), Counter(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(*address, timeout=60)
        while (number := next(numbers)) < requests and time.monotonic() < deadline:
            try:
                status, _ = post(connection, bodies[number % len(bodies)])
            except (OSError, http.client.HTTPException, ValueError):
                status = "failed"
                connection.close()  # http.client reconnects on the next request
            with lock:
                statuses[status] += 1
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "statuses": dict(statuses),
            "per_second": statuses[200] / elapsed}


def timed_requests(address: tuple[str, int], method: str, body: bytes | None,
                   stop: threading.Event, pause: float) -> list[tuple[float, object]]:
    """One request after another, each on a fresh connection, until `stop`: each one's time in
    seconds and its status (or the exception's name)."""
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        connection = http.client.HTTPConnection(*address, timeout=60)
        try:
            connection.request(method, "/health" if body is None else "/predict", body=body)
            response = connection.getresponse()
            response.read()
            status: object = response.status
        except (OSError, http.client.HTTPException) as error:
            status = type(error).__name__
        finally:
            connection.close()
        times.append((time.perf_counter() - started, status))
        stop.wait(pause)
    return times


def slow_client(address: tuple[str, int], stop: threading.Event) -> int:
    """Sends a request's head a byte a second, again on a new connection whenever the server
    closes one, until `stop`: how many connections the server closed."""
    head, closed = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 0
    while not stop.is_set():
        with socket.create_connection(address) as connection:
            for index in range(len(head)):
                try:
                    connection.sendall(head[index:index + 1])
                except OSError:
                    closed += 1
                    break
                if stop.wait(1):
                    break
    return closed


def hostile_bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    """The worst uploads: each body, and its headers."""
    size = Limits.max_body_bytes - 1000
    nested, nested_type = hostile.nested_form(20_000)
    return {"scan-heavy JPEG": (hostile.many_scans_jpeg(4000, size // 62), {}),
            "multipart bomb": (hostile.multipart_bomb(size),
                               {"Content-Type": "multipart/form-data; boundary=b"}),
            "nested form": (nested, {"Content-Type": nested_type})}


def attacker(address: tuple[str, int], body: bytes, headers: dict[str, str],
             stop: threading.Event) -> Counter:
    """Sends `body` again and again until `stop`: the statuses it got."""
    statuses: Counter = Counter()
    while not stop.is_set():
        connection = http.client.HTTPConnection(*address, timeout=60)
        try:
            connection.request("POST", "/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
        except (OSError, http.client.HTTPException) as error:
            statuses[type(error).__name__] += 1
        finally:
            connection.close()
    return statuses


def flood(address: tuple[str, int], seconds: float, per_kind: int) -> None:
    """The flood (see the docstring), for `seconds`; prints what each kind of client got."""
    stop, bodies = threading.Event(), hostile_bodies()
    for name, (body, _) in bodies.items():
        print(f"{per_kind} clients sending a {name} of {len(body) / 2**20:.1f} MiB")
    print(f"{SLOW_CLIENTS} slow clients; /health every 0.1 s and examples/seven.png every 0.2 s")
    with ThreadPoolExecutor(2 + SLOW_CLIENTS + per_kind * len(bodies)) as pool:
        health = pool.submit(timed_requests, address, "GET", None, stop, 0.1)
        predict = pool.submit(timed_requests, address, "POST", SEVEN.read_bytes(), stop, 0.2)
        slow = [pool.submit(slow_client, address, stop) for _ in range(SLOW_CLIENTS)]
        attacks = {name: [pool.submit(attacker, address, body, headers, stop)
                          for _ in range(per_kind)]
                   for name, (body, headers) in bodies.items()}
        time.sleep(seconds)
        stop.set()
        for name, futures in attacks.items():
            statuses = sum((future.result() for future in futures), Counter())
            print(f"{name}: {dict(statuses)}")
        print(f"slow clients: {sum(future.result() for future in slow)} connections closed by "
              "the server")
        for name, future in (("/health", health), ("normal /predict", predict)):
            times = future.result()
            latencies = [1000 * elapsed for elapsed, _ in times]
            print(f"{name}: {len(times)} requests, {dict(Counter(s for _, s in times))}; "
                  f"median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="dataset root holding MNIST/raw/ (the test digits drawn)")
    parser.add_argument("--workers", type=worker_count,
                        help="serve.py's --workers (default: serve.py's)")
    parser.add_argument("--clients", type=positive_int, default=8,
                        help="clients sending at once, for the throughput")
    parser.add_argument("--requests", type=positive_int, default=2000,
                        help="requests of the throughput run, at most")
    parser.add_argument("--seconds", type=positive_int, default=60,
                        help="length of the throughput run, at most")
    parser.add_argument("--calls", type=positive_int, default=300,
                        help="requests of the one-client latency run")
    parser.add_argument("--side", type=positive_int, default=drawings.SENT_SIDE,
                        help="side in pixels of the drawings sent (the page's canvas is "
                             f"{drawings.CANVAS_SIDE})")
    parser.add_argument("--flood", action="store_true",
                        help="measure /health and /predict under a flood of the worst inputs")
    parser.add_argument("--flooders", type=positive_int, default=4,
                        help="clients sending each kind of hostile upload, with --flood")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.flood:
        print(f"serve.py on {cpu_name()} ({os.cpu_count()} CPUs), torch {torch.__version__}; "
              f"load average {load()} before")
        with ServerProcess(args.model, args.workers) as address:
            flood(address, args.seconds, args.flooders)
        print(f"load average {load()} after")
        return
    images, labels = load_dataset(args.data_dir, train=False, download=False)
    bodies = [drawings.canvas_png(images[i].numpy(), args.side) for i in range(DRAWINGS)]
    print(f"serve.py on {cpu_name()} ({os.cpu_count()} CPUs), torch {torch.__version__}; "
          f"load average {load()} before")
    print(f"requests: the first {DRAWINGS} MNIST test digits drawn as pen strokes, "
          f"{args.side}x{args.side} PNG ({statistics.mean(map(len, bodies)) / 1000:.1f} KB "
          "on average), as the page sends them")
    with ServerProcess(args.model, args.workers) as address:
        alone = latency(address, bodies, labels[:DRAWINGS].tolist(), args.calls)
        print(f"1 client, {args.calls} requests: the server's time median "
              f"{alone['server_median']:.2f} ms (p90 {alone['server_p90']:.2f}), round trip "
              f"median {alone['round_trip_median']:.2f} ms (p90 {alone['round_trip_p90']:.2f}); "
              f"{alone['right']} of the {alone['drawings']} drawings read right")
        together = throughput(address, bodies, args.clients, args.requests, args.seconds)
        answers = ", ".join(f"{status}: {count}" for status, count in together["statuses"].items())
        print(f"{args.clients} clients: {together['per_second']:.0f} predictions/s "
              f"({answers}) in {together['seconds']:.1f} s")
    print(f"load average {load()} after")


if __name__ == "__main__":
    run_cli(main)
