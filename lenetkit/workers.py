"""The model behind the server (server.py and webapp.py, the HTTP side): its predictions, each
with a time limit, made in a few threads of the server's process or, with --workers, in worker
processes that each load the model once; a worker that stalls or dies is replaced (see Model;
docs/serving.md has the figures of both)."""

import base64
import contextlib
import io
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from lenetkit.environment import PROJECT_DIR, default_model_path
from lenetkit.errors import UserError
from lenetkit.multidigit import preprocess_number
from lenetkit.prediction import Number, Predictor, input_image
from lenetkit.preprocess import ImageError
from lenetkit.threads import SERVING_THREADS, use_threads

# A drawing takes milliseconds and the largest image the decoder accepts about a second: a
# prediction still running after this is stuck (a stalled worker), and its client is told so.
DEADLINE_S = 10.0
# Predictions admitted per thread (or worker): one running, the others waiting. More are refused
# at once, so that a flood can't queue up work that its clients would wait minutes for.
ADMITTED_PER_LANE = 4
# A worker process loads PyTorch and the model in a few seconds, more on a busy machine.
WORKER_START_S = 120.0
log = logging.getLogger("lenetkit.server")


class Busy(Exception):
    """Every place for a prediction is taken: the client should try again in a moment."""


class Unfinished(Exception):
    """A prediction that did not finish: its worker process stalled past the time limit, or
    died. The worker has been replaced."""


class WorkerDied(Unfinished):
    """The worker process ended before it answered (killed, or crashed)."""


class Model:
    """One model file's predictions, for the server.

    Reading a drawing is mostly preprocessing: many small numpy, scipy and Pillow calls that hold
    Python's GIL, so the threads of one process take turns on about one core. Without workers,
    predictions run in as many threads as there are cores (more would only contend for them); the
    network under a lock, since PyTorch does not promise that one module may run in several
    threads at once. With `workers`, they run in that many worker processes (WorkerPool); this
    process loads the model too: to refuse a bad file before serving, and to say what it knows
    (/health). Either way at most ADMITTED_PER_LANE predictions per lane are admitted (submit),
    and each has `deadline` seconds."""

    def __init__(self, path: str | Path | None = None, workers: int = 0,
                 deadline: float = DEADLINE_S) -> None:
        self.path = Path(path or default_model_path())
        self.predictor = Predictor(self.path)
        self.classes = list(self.predictor.classes)
        self.predictor.top_k = len(self.classes)  # the page draws a bar for every class
        self.deadline, self.lock = deadline, threading.Lock()
        lanes = workers or os.cpu_count() or 1
        self.threads = ThreadPoolExecutor(lanes, thread_name_prefix="predict")
        self.capacity = lanes * ADMITTED_PER_LANE  # predictions admitted at once
        self.admitted = threading.BoundedSemaphore(self.capacity)
        self.pool = WorkerPool(self.path, workers) if workers else None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the threads and the worker processes; predictions not begun are dropped."""
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None:
            self.pool.close()

    def info(self) -> dict:
        """What /health says of the model (the server adds its own limits)."""
        dataset = self.predictor.record["dataset"]
        return {"status": "ok", "model": self.name(), "dataset": dataset, "classes": self.classes}

    def name(self) -> str:
        """The model file's path within the project (lenetkit/pretrained/mnist_model.pth), else its
        name: where it lies elsewhere on the machine is none of a client's business."""
        try:
            return str(self.path.resolve().relative_to(PROJECT_DIR))
        except ValueError:
            return self.path.name

    def submit(self, image_file: bytes) -> "Future[dict]":
        """The prediction for an image file's bytes, to come (it fails with ImageError when the
        file is not an image, too large, or holds nothing to read; with Unfinished when a worker
        stalled or died). Busy, at once, when every place is taken. With workers, the future is
        settled by the deadline; without, the caller stops waiting at the deadline (a thread
        can't be stopped), and the thread's place stays taken until it is done."""
        if not self.admitted.acquire(blocking=False):
            raise Busy("the server is busy: try again in a moment")
        try:
            if self.pool is None:
                future = self.threads.submit(self.answer, image_file)
            else:
                future = self.threads.submit(self.pool.answer, image_file,
                                             time.monotonic() + self.deadline)
        except BaseException:
            self.admitted.release()
            raise
        future.add_done_callback(lambda _: self.admitted.release())
        return future

    def answer(self, image_file: bytes) -> dict:
        """The prediction for an image file's bytes, made in this thread. For an MNIST model it
        reads the number (Predictor.read_number): its digits under "digits" and their string
        under "number", the first digit's prediction at the top level, as any model's is."""
        image = self.predictor.read(Body(image_file))
        numbers = self.predictor.reads_numbers
        inputs = preprocess_number(image) if numbers else self.predictor.inputs(image)
        with self.lock:
            predictions = self.predictor(inputs)
        assert isinstance(predictions, list)  # a batch: of one input, or of a number's digits
        prediction, number, png = predictions[0], Number(predictions), io.BytesIO()
        input_image(number.input).save(png, "PNG")
        answer = {"label": prediction.label, "name": prediction.name,
                  "probability": prediction.probability, "confident": prediction.confident,
                  "is_digit": prediction.is_digit, "digit_score": prediction.digit_score,
                  "top": [{"name": name, "probability": p} for name, p in prediction.top],
                  "input": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}
        if numbers:
            answer["number"] = number.text
            answer["digits"] = [{"name": digit.name, "probability": digit.probability,
                                 "confident": digit.confident, "is_digit": digit.is_digit}
                                for digit in predictions]
        return answer


class WorkerPool:
    """`size` worker processes, each with the model loaded, each predicting one image at a time.
    One that misses a prediction's deadline (stalled) or dies is killed and replaced by a fresh
    one, which starts in the background while the others serve."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.closed = path, False
        self.idle: queue.Queue[Worker] = queue.Queue()
        self.workers: set[Worker] = set()
        self.changing = threading.Lock()
        starting = [Worker(path) for _ in range(size)]  # spawned together, loading in parallel
        try:
            for worker in starting:
                worker.wait_ready()
        except BaseException:
            for worker in starting:
                worker.stop()
            raise
        for worker in starting:
            self.workers.add(worker)
            self.idle.put(worker)

    def pids(self) -> list[int]:
        """The worker processes' ids."""
        with self.changing:
            return sorted(worker.pid for worker in self.workers)

    def answer(self, image_file: bytes, deadline: float, retry: bool = True) -> dict:
        """Model.answer, in an idle worker process, by the `deadline` (time.monotonic's). A worker
        that dies as it is asked (a process can look alive while its threads still exit) is
        replaced and the image asked once more: a prediction can be repeated."""
        worker = self.take(deadline)
        try:
            reply = worker.ask(image_file, deadline)
        except Unfinished as unfinished:
            self.replace(worker)
            if retry and isinstance(unfinished, WorkerDied):
                return self.answer(image_file, deadline, retry=False)
            raise
        self.idle.put(worker)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def take(self, deadline: float) -> "Worker":
        """An idle worker that is still alive (a dead one is replaced on the way)."""
        while True:
            try:
                worker = self.idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Unfinished("no worker process was free within the time limit (one may be "
                                 "restarting): try again in a moment") from None
            if worker.process.is_alive():
                return worker
            log.warning("worker process %d had ended (exit status %s): starting another",
                        worker.pid, worker.process.exitcode)
            self.replace(worker)

    def replace(self, worker: "Worker") -> None:
        """Stops `worker` and starts another in its place, in the background."""
        worker.stop()
        with self.changing:
            self.workers.discard(worker)
            if self.closed:
                return
        threading.Thread(target=self.start_one, daemon=True).start()

    def start_one(self) -> None:
        try:
            worker = Worker(self.path)
            worker.wait_ready()
        except UserError as error:
            log.warning("a worker process could not start (%s): one fewer serves", error)
            return
        with self.changing:
            if not self.closed:
                self.workers.add(worker)
                self.idle.put(worker)
                return
        worker.stop()

    def close(self) -> None:
        """Stops every worker process."""
        with self.changing:
            self.closed, workers = True, list(self.workers)
        for worker in workers:
            worker.stop()


class Worker:
    """One worker process (spawned, not forked: a fork of a process that has run PyTorch can
    inherit its thread pools' locks held, and hang) and the pipe to it."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve_in_worker, args=(path, child), daemon=True)
        self.stopped = False
        self.process.start()
        child.close()
        assert self.process.pid is not None
        self.pid = self.process.pid

    def wait_ready(self) -> None:
        """Returns once the worker has loaded the model; UserError when it can't."""
        try:
            if not self.connection.poll(WORKER_START_S):
                raise UserError(f"a worker process did not start within {WORKER_START_S:g} s")
            status = self.connection.recv()
        except (OSError, EOFError):
            status = f"it ended with exit status {self.process.exitcode}"
        if status != "ready":
            self.stop()
            raise UserError(f"the worker processes could not start ({status})")

    def ask(self, image_file: bytes, deadline: float) -> "dict | Exception":
        """The worker's answer for an image: a prediction, or the exception it raised. A
        watchdog kills the worker at the deadline, which ends a send or receive stuck on it."""
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), self.kill)
        watchdog.start()
        try:
            self.connection.send_bytes(image_file)
            reply = self.connection.recv()
        except (OSError, EOFError):
            reply = None
        finally:
            watchdog.cancel()
        if self.stopped:
            raise Unfinished("reading the image took longer than the server's time limit (the "
                             "worker process was stopped and replaced)")
        if reply is None:
            raise WorkerDied(f"the worker process reading the image ended (exit status "
                             f"{self.process.exitcode}) and was replaced: try again")
        return reply

    def kill(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.process.kill()  # SIGKILL: a stopped process ends too

    def stop(self) -> None:
        """Ends the worker, and reaps it."""
        self.kill()
        self.connection.close()
        self.process.join(timeout=5)


def serve_in_worker(path: Path, connection: Connection) -> None:
    """A worker process: loads the model, says "ready" (or why it can't), then answers each image
    file's bytes with Model.answer's result or its exception, until the pipe closes."""
    # Ctrl-C reaches every process of the server from the terminal: the server stops its
    # workers itself, without their tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_with_parent, daemon=True).start()
    use_threads(SERVING_THREADS)  # whatever the environment says: see SERVING_THREADS
    try:
        model = Model(path)
    except Exception as error:  # noqa: BLE001 -- said by the server, as one line
        connection.send(str(error))
        return
    connection.send("ready")
    while True:
        try:
            image_file = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            reply: dict | Exception = model.answer(image_file)
        except ImageError as error:
            reply = error
        except Exception as error:  # noqa: BLE001 -- one image's failure, told to the server
            reply = RuntimeError(f"{type(error).__name__}: {error}")
        connection.send(reply)


def exit_with_parent() -> None:
    """Ends this worker when the server's process ends, however it ends (killed too): no worker
    outlives it."""
    parent = multiprocessing.parent_process()
    assert parent is not None, "not a worker process"
    parent.join()
    os._exit(0)


class Body(io.BytesIO):
    """A request's body as a file, named in Pillow's complaints as what it is."""

    def __repr__(self) -> str:
        return "'the request body'"
