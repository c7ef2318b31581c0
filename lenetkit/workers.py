"""The model behind the server (server.py, the HTTP side): its predictions, made in the request
threads or, with --workers, in a pool of worker processes that each load the model once (see
Model; docs/serving.md has the figures of both)."""

import base64
import contextlib
import io
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from lenetkit.environment import PROJECT_DIR, default_model_path
from lenetkit.errors import UserError
from lenetkit.prediction import Prediction, Predictor, input_image


class Model:
    """One model file's predictions, for the request threads.

    Reading a drawing is mostly preprocessing: many small numpy, scipy and Pillow calls that hold
    Python's GIL, so the threads of one process take turns on about one core. With `workers`,
    predictions run in that many worker processes, each of which loads the model once, when it
    starts; the request threads only parse requests and wait for the answers. This process loads
    the model too: to refuse a bad file before serving, and to say what it knows (/health).

    Without workers (as in each worker itself), predictions run in the calling thread: the
    preprocessing in as many threads at once as there are cores (more would only contend for
    them), the network under a lock, since PyTorch does not promise that one module may run in
    several threads at once."""

    def __init__(self, path: str | Path | None = None, workers: int = 0) -> None:
        self.path = Path(path or default_model_path())
        self.predictor = Predictor(self.path)
        self.classes = list(self.predictor.classes)
        self.predictor.top_k = len(self.classes)  # the page draws a bar for every class
        self.lock = threading.Lock()
        self.working = threading.BoundedSemaphore(os.cpu_count() or 1)
        self.workers, self.restarting = workers, threading.Lock()
        self.pool = start_pool(self.path, workers) if workers else None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the worker processes, once the predictions they have begun are made."""
        with self.restarting:
            pool, self.pool, self.workers = self.pool, None, 0
        if pool is not None:
            pool.shutdown(cancel_futures=True)

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

    def predict(self, image_file: bytes) -> dict:
        """The prediction for an image file's bytes, as Predictor reads files (ImageError when it
        is not an image, too large, or holds nothing to read). Its milliseconds count from here,
        so they include the handing over to a worker process and back."""
        started = time.perf_counter()
        pool = self.pool
        answer = self.answer(image_file) if pool is None else self.in_worker(pool, image_file)
        return {**answer, "milliseconds": 1000 * (time.perf_counter() - started)}

    def in_worker(self, pool: ProcessPoolExecutor, image_file: bytes) -> dict:
        """The answer from a worker process. When one has died (killed, or crashed on an
        image), the pool can take no more work: it is replaced, and this request fails."""
        try:
            return pool.submit(answer_in_worker, image_file).result()
        except BrokenProcessPool:
            with self.restarting:
                if self.pool is pool:  # not yet replaced by another request's thread, nor closed
                    pool.shutdown(wait=False)
                    self.pool = start_pool(self.path, self.workers)
            raise

    def answer(self, image_file: bytes) -> dict:
        """The prediction for an image file's bytes, made in this thread."""
        with self.working:
            inputs = self.predictor.inputs(self.predictor.read(Body(image_file)))
            with self.lock:
                prediction = self.predictor(inputs[0])
        assert isinstance(prediction, Prediction)  # one input, not a batch: one prediction
        png = io.BytesIO()
        input_image(prediction.input).save(png, "PNG")
        return {"label": prediction.label, "name": prediction.name,
                "probability": prediction.probability, "confident": prediction.confident,
                "top": [{"name": name, "probability": p} for name, p in prediction.top],
                "input": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}


def start_pool(path: Path, workers: int) -> ProcessPoolExecutor:
    """`workers` processes that predict with the model in `path`, once all have loaded it (so
    that none is still loading, and taking a core, while the server answers). They are spawned,
    not forked: a fork of a process that has run PyTorch can inherit its thread pools' locks
    held, and hang."""
    context = multiprocessing.get_context("spawn")
    loaded = context.Barrier(workers)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker,
                               initargs=(path, loaded))
    try:
        with sigint_blocked():  # the workers are spawned by these calls, and inherit the mask
            futures = [pool.submit(worker_ready) for _ in range(workers)]
        for future in futures:
            future.result()
    except BaseException as error:
        loaded.abort()  # frees the workers that wait for the others
        pool.shutdown(cancel_futures=True)
        if isinstance(error, BrokenProcessPool):
            raise UserError(f"the worker processes could not start ({error})") from None
        raise
    return pool


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Ctrl-C held back in this thread, and in the processes it starts: the terminal sends it to
    every process of the server, and the server stops its workers itself, without their
    tracebacks."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: Ctrl-C reaches the console's processes
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# A worker process's Model, or why it could not be made.
_worker_model: "Model | Exception | None" = None


def start_worker(path: Path, loaded: threading.Barrier) -> None:
    """A worker process's start: it loads the model, once, and waits until the others have."""
    global _worker_model
    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(1)  # each worker is one core's share: see server.main()
    try:
        _worker_model = Model(path)
    except Exception as error:  # noqa: BLE001 -- said by the tasks, as one line, not a traceback
        _worker_model = error
    with contextlib.suppress(threading.BrokenBarrierError):  # the server gave up on starting
        loaded.wait()


def exit_with_parent() -> None:
    """Ends this worker when the server's process ends, however it ends (killed too): no worker
    outlives it."""
    parent = multiprocessing.parent_process()
    assert parent is not None, "not a worker process"
    parent.join()
    os._exit(0)


def worker_model() -> "Model":
    """This worker process's Model (start_worker's error, if it could not load it)."""
    if isinstance(_worker_model, Exception):
        raise _worker_model
    assert _worker_model is not None, "not a worker process"
    return _worker_model


def worker_ready() -> None:
    """Nothing, once this worker process has its model: start_pool checks that they load it."""
    worker_model()


def answer_in_worker(image_file: bytes) -> dict:
    """Model.answer, in a worker process."""
    return worker_model().answer(image_file)


class Body(io.BytesIO):
    """A request's body as a file, named in Pillow's complaints as what it is."""

    def __repr__(self) -> str:
        return "'the request body'"
