"""serve.py: the page and the HTTP API, answered by a server in this process; each refusal is a
4xx with one line of JSON, and the server goes on serving. Then the page in a real browser
(headless Chromium): digits drawn with the pointer are read, and photos too."""

import base64
import http.client
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lenetkit.server
from lenetkit.datasets import DATASETS, load_dataset
from lenetkit.environment import PRETRAINED_MODEL_PATH, default_model_path
from lenetkit.model import build_model
from lenetkit.modelfile import model_record, save_model
from lenetkit.outputs import write_atomic
from lenetkit.prediction import Predictor
from lenetkit.preprocess import ImageError, read_image

import drawings
import hostile
import photos
from conftest import PROJECT_DIR, REAL_DATA_DIR, needs_real_mnist, run_main

SEVEN = PROJECT_DIR / "examples" / "seven.png"
NINE = PROJECT_DIR / "examples" / "nine_on_black.jpg"


@contextmanager
def running(model: lenetkit.server.Model, **limits):
    """A lenetkit.server.Server for `model` on a free port of 127.0.0.1, serving in a thread;
    yields it."""
    server = lenetkit.server.start_server(model, "127.0.0.1", 0, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def shipped() -> lenetkit.server.Model:
    return lenetkit.server.Model(PRETRAINED_MODEL_PATH)


@pytest.fixture(scope="module")
def server(shipped):
    with running(shipped) as server:
        yield server


def ask(server, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, dict | bytes]:
    """One request: the status, the headers (their names in any case, as HTTP has them), and the
    body (parsed when it is JSON)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        content = response.read()
        if content and response.getheader("Content-Type") == "application/json":  # HEAD: none
            content = json.loads(content)
        return response.status, response.headers, content
    finally:
        connection.close()


def refusal(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, expected: int = 400) -> str:
    """The one-line reason of a refused request, after checking its status, and that the
    server answers the next request."""
    status, reply_headers, content = ask(server, method, path, body, headers)
    assert status == expected, content
    assert reply_headers["Content-Type"] == "application/json" and list(content) == ["error"]
    assert "\n" not in content["error"]
    assert ask(server, "GET", "/health")[0] == 200
    return content["error"]


def raw_exchange(server, request: bytes, wait: float = 30, and_no_more: bool = False) -> bytes:
    """What the server answers, until it closes the connection, to `request` sent as is on a
    fresh connection (`and_no_more`: then the client's side closed)."""
    with socket.create_connection(server.server_address[:2], timeout=wait) as connection:
        connection.sendall(request)
        if and_no_more:
            connection.shutdown(socket.SHUT_WR)
        return received(connection)


def received(connection: socket.socket) -> bytes:
    """All a connection receives until the server closes it."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url_pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_the_page_is_served_by_the_server_itself_with_nothing_from_elsewhere(server):
    status, headers, page = ask(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<canvas" in page and b'type="file"' in page
    for path in ("/app.js", "/style.css"):
        status, _, content = ask(server, "GET", path)
        assert status == 200 and b"http:" not in content and b"https:" not in content
    assert b"http:" not in page and b"https:" not in page  # works offline: no CDN
    assert "default-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/", "/app.js", "/health"])
def test_head_answers_where_get_does_with_the_headers_and_no_body(server, path):
    """Uptime monitors and `curl -I` ask with HEAD."""
    get_status, get_headers, _ = ask(server, "GET", path)
    status, headers, content = ask(server, "HEAD", path)
    assert (status, get_status) == (200, 200) and content == b""
    assert headers["Content-Type"] == get_headers["Content-Type"]


def test_health_says_which_model_answers_and_the_classes_it_knows(server):
    status, _, content = ask(server, "GET", "/health")
    assert status == 200
    assert content["status"] == "ok" and content["dataset"] == "mnist"
    assert content["model"] == "lenetkit/pretrained/mnist_model.pth"
    assert content["classes"] == [str(digit) for digit in range(10)]


def test_each_connection_sends_without_waiting_to_fill_a_packet(server):
    """TCP_NODELAY on the server's end of every connection: an answer goes out as head then body,
    and without it the body of each answer after the first on a kept-alive connection waits for
    the client's delayed acknowledgement of the head (tens of milliseconds)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/health")
    connection.getresponse().read()
    sockets = [protocol.transport.get_extra_info("socket")
               for protocol in server.uvicorn.server_state.connections]
    assert sockets and all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                           for sock in sockets)
    connection.close()


def test_a_png_is_read_as_load_model_reads_its_file(server):
    status, headers, answer = ask(server, "POST", "/predict", SEVEN.read_bytes(),
                                  {"Content-Type": "image/png"})
    expected = Predictor(PRETRAINED_MODEL_PATH, top_k=10)(SEVEN)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert (answer["label"], answer["name"]) == (7, "7") == (expected.label, expected.name)
    assert answer["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert [entry["name"] for entry in answer["top"]] == [name for name, _ in expected.top]
    assert sum(entry["probability"] for entry in answer["top"]) == pytest.approx(1, abs=1e-4)
    seen = data_url_pixels(answer["input"])
    assert seen.shape == (28, 28)
    assert np.array_equal(seen, (expected.input * 255).round().to(torch.uint8).numpy())
    assert answer["confident"] is True and answer["milliseconds"] > 0


@needs_real_mnist
def test_a_photo_of_a_number_is_read_left_to_right_as_load_model_reads_it(server, tmp_path):
    images, _ = load_dataset(REAL_DATA_DIR, train=False, download=False)
    path = tmp_path / "number.jpg"
    path.write_bytes(photos.encode(*photos.render(images[:4].numpy(), "phone photo", seed=3)))
    status, _, answer = ask(server, "POST", "/predict", path.read_bytes())
    expected = Predictor(PRETRAINED_MODEL_PATH).read_number(path)
    assert status == 200 and answer["number"] == expected.text and len(expected.text) == 4
    assert [digit["name"] for digit in answer["digits"]] == list(expected.text)
    assert answer["name"] == expected.digits[0].name  # the first digit, as for any image
    assert data_url_pixels(answer["input"]).shape == (28, 4 * 28)


def test_a_jpeg_photo_is_read_whether_sent_as_the_body_or_in_a_multipart_form(server):
    photo = NINE.read_bytes()
    status, _, answer = ask(server, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})
    assert status == 200 and answer["name"] == "9"
    boundary = "----a-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"nine.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    form += photo + f"\r\n--{boundary}--\r\n".encode()
    status, _, from_form = ask(server, "POST", "/predict", form,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and from_form["name"] == "9"
    assert from_form["probability"] == pytest.approx(answer["probability"], abs=1e-6)


def test_a_form_without_a_file_is_refused(server):
    form = b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--b--\r\n"
    reason = refusal(server, "POST", "/predict", form,
                     {"Content-Type": "multipart/form-data; boundary=b"})
    assert "no file" in reason


def test_a_file_that_is_not_an_image_is_refused(server):
    reason = refusal(server, "POST", "/predict", b"%PDF-1.4 not a digit")
    assert reason.startswith("not a readable image (not a format Pillow reads: give a PNG, JPEG")
    assert "request body" not in reason  # no words of Pillow's about its file object


def test_an_empty_body_is_refused(server):
    assert "empty" in refusal(server, "POST", "/predict", b"")


def test_a_blank_image_is_refused_as_holding_no_digit(server):
    blank = png(Image.new("L", (140, 140), 0))
    assert "no digit found" in refusal(server, "POST", "/predict", blank)


def test_an_image_bomb_is_refused_unread(server):
    bomb = png(Image.new("1", (6000, 5000)))  # a small file of 30 megapixels
    assert len(bomb) < 100_000
    assert "too large" in refusal(server, "POST", "/predict", bomb)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    # Only the headers are sent: the answer can't wait for the body.
    head = ("POST /predict HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {lenetkit.server.Limits.max_body_bytes + 1}\r\n\r\n").encode()
    answer = raw_exchange(server, head, wait=10)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over the limit" in answer
    assert ask(server, "GET", "/health")[0] == 200


def test_a_client_that_sends_the_whole_oversized_body_before_reading_gets_the_413(server):
    # As Python's urllib and http.client send: the server drains the body it refused, so that
    # the client's system has no bytes left to answer with a reset that would drop the answer.
    too_large = bytes(lenetkit.server.Limits.max_body_bytes + 1)
    for _ in range(3):
        assert "over the limit" in refusal(server, "POST", "/predict", too_large, expected=413)


def test_a_websocket_upgrade_is_answered_as_http_without_advice_to_install_one(server, caplog):
    request = (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    answer = raw_exchange(server, request, wait=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status": "ok"' in answer
    assert not [record for record in caplog.records if "upgrade" in record.getMessage().lower()
                or "WebSocket" in record.getMessage()]


def test_a_body_without_a_content_length_is_refused(server):
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ") and b"no Content-Length" in answer
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_exchange(server, chunked).startswith(b"HTTP/1.1 411 ")


@pytest.mark.parametrize("length", ["-1", "12abc", "1_000", "0x10"])
def test_a_content_length_that_is_not_a_number_of_bytes_is_refused(server, length):
    request = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    assert raw_exchange(server, request).startswith(b"HTTP/1.1 400 ")


def test_a_body_cut_short_is_refused(server):
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                                  b"\r\n\r\nonly this", and_no_more=True)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ended before its 100 bytes" in answer


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/predict", "POST"), ("POST", "/health", "GET"), ("DELETE", "/", "GET"),
    ("PUT", "/predict", "POST")])
def test_a_wrong_method_is_refused_with_the_one_allowed(server, method, path, allowed):
    status, headers, content = ask(server, method, path, b"" if method != "GET" else None)
    assert status == 405 and headers["Allow"] == allowed and allowed in content["error"]
    assert ask(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize("path", ["/nothing", "/static/index.html", "/../serve.py", "/app.js/x"])
def test_an_unknown_path_is_not_found_and_no_other_file_is_ever_served(server, path):
    assert "no such path" in refusal(server, "GET", path, expected=404)


def test_an_unknown_method_or_a_malformed_request_gets_json_too(server):
    answer = raw_exchange(server, b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501 ") and b'{"error": "Unsupported method' in answer
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n"
    answer = raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'{"error": "the request\'s line and' in answer
    assert ask(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize("request_line", [b"GET /", b"\x16\x03\x01 TLS", b"GET / HTTP/x",
                                          b"GET / HTTP/1.1 extra"])
def test_a_request_line_the_server_cant_parse_gets_a_status_line_and_json(server, request_line):
    answer = raw_exchange(server, request_line + b"\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "not a valid HTTP/1.1 request"}
    assert ask(server, "GET", "/health")[0] == 200


def test_the_api_is_described_in_openapi(server):
    status, headers, description = ask(server, "GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(description["paths"]) == {"/health", "/predict"}
    assert "multipart/form-data" in description["paths"]["/predict"]["post"]["requestBody"][
        "content"]


def test_a_jpeg_of_very_many_scans_is_refused_before_it_is_decoded():
    """Each scan of a progressive JPEG costs its decoder a pass over the whole image, however few
    bytes it takes: such a file of a megabyte would take minutes to decode."""
    jpeg = hostile.many_scans_jpeg(4000, 20_000)
    started = time.monotonic()
    with pytest.raises(ImageError, match="20,000 scans at 4000x4000 pixels is too much work"):
        read_image(io.BytesIO(jpeg))
    assert time.monotonic() - started < 1
    ordinary = io.BytesIO()
    Image.radial_gradient("L").resize((4000, 3000)).save(ordinary, "JPEG", progressive=True)
    assert read_image(ordinary).size == (1000, 750)  # decoded at a reduced scale


def test_uploads_of_very_many_scans_are_refused_while_health_answers(server):
    jpeg = hostile.many_scans_jpeg(4000, 20_000)
    with ThreadPoolExecutor(4) as clients:
        uploads = [clients.submit(ask, server, "POST", "/predict", jpeg) for _ in range(4)]
        started = time.monotonic()
        assert ask(server, "GET", "/health")[0] == 200
        assert time.monotonic() - started < 1
        for upload in uploads:
            status, _, answer = upload.result()
            assert status == 400 and "too much work to decode" in answer["error"]


def test_a_form_of_very_many_tiny_parts_is_refused_at_once(server):
    bomb = hostile.multipart_bomb(8_000_000)  # under the limit on bodies
    started = time.monotonic()
    reason = refusal(server, "POST", "/predict", bomb,
                     {"Content-Type": "multipart/form-data; boundary=b"})
    assert "Too many fields" in reason and time.monotonic() - started < 5


def test_a_deeply_nested_form_is_refused_as_not_an_image(server):
    form, content_type = hostile.nested_form(5000)
    assert "not a readable image" in refusal(server, "POST", "/predict", form,
                                             {"Content-Type": content_type})


def test_a_form_of_two_files_is_refused(server):
    part = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
            + SEVEN.read_bytes() + b"\r\n")
    reason = refusal(server, "POST", "/predict", part * 2 + b"--b--\r\n",
                     {"Content-Type": "multipart/form-data; boundary=b"})
    assert "Too many files" in reason


@pytest.mark.slow
def test_slow_clients_neither_lock_others_out_nor_outstay_the_head_deadline(shipped):
    """Forty clients send a request's head a byte at a time: the others are served all the while,
    and each slow one is closed once its head has taken longer than client_timeout, although
    it never stopped sending."""
    with running(shipped, client_timeout=1) as server:
        slow = [socket.create_connection(server.server_address[:2]) for _ in range(40)]
        started, head, closed = time.monotonic(), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", {}
        for index in range(12):  # a byte every 0.25 s: the head would take 8 s
            for connection in slow:
                if connection not in closed and not sends(connection, head[index:index + 1]):
                    closed[connection] = time.monotonic() - started
            status, _, _ = ask(server, "GET", "/health")
            assert status == 200
            time.sleep(0.25)
        assert len(closed) == 40 and max(closed.values()) < 3
        for connection in slow:
            connection.close()


def sends(connection: socket.socket, data: bytes) -> bool:
    """Whether `data` could still be sent: False once the server has closed the connection."""
    try:
        if select.select([connection], [], [], 0)[0] and connection.recv(1024) == b"":
            return False
        connection.sendall(data)
        return True
    except OSError:
        return False


def slow_answers(model, monkeypatch, release: threading.Event) -> None:
    """Makes each of `model`'s predictions wait for `release`, as an image slow to read does."""
    answer = model.answer

    def slow(image_file: bytes) -> dict:
        release.wait(30)
        return answer(image_file)

    monkeypatch.setattr(model, "answer", slow)


def test_a_prediction_over_the_time_limit_gets_503_and_the_server_goes_on(monkeypatch):
    model = lenetkit.server.Model(PRETRAINED_MODEL_PATH, deadline=0.5)
    release = threading.Event()
    slow_answers(model, monkeypatch, release)
    with running(model) as server:
        started = time.monotonic()
        reason = refusal(server, "POST", "/predict", SEVEN.read_bytes(), expected=503)
        assert "time limit of 0.5 s" in reason and time.monotonic() - started < 5
        release.set()
        assert ask(server, "POST", "/predict", SEVEN.read_bytes())[2]["name"] == "7"
    model.close()


def test_while_every_reader_is_busy_health_answers_and_more_images_get_503_at_once(
        shipped, monkeypatch):
    release = threading.Event()
    slow_answers(shipped, monkeypatch, release)
    admitted = shipped.capacity
    with running(shipped) as server, ThreadPoolExecutor(admitted) as clients:
        waiting = [clients.submit(ask, server, "POST", "/predict", SEVEN.read_bytes())
                   for _ in range(admitted)]
        time.sleep(0.5)  # all admitted, none answered
        started = time.monotonic()
        assert ask(server, "GET", "/health")[0] == 200
        status, headers, answer = ask(server, "POST", "/predict", SEVEN.read_bytes())
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in answer["error"]
        assert time.monotonic() - started < 1
        release.set()
        assert all(request.result()[0] == 200 for request in waiting)


def test_clients_that_hang_up_leave_no_traceback_on_the_servers_terminal(server, capsys, caplog):
    address = server.server_address[:2]
    for request in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nsome",
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                    % len(SEVEN.read_bytes()) + SEVEN.read_bytes(), b"GET /heal"):
        for _ in range(5):
            connection = socket.create_connection(address)
            connection.sendall(request)
            # A reset, not a close: the server's next write on it fails.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            connection.close()
    time.sleep(0.5)
    assert ask(server, "GET", "/health")[0] == 200
    printed = capsys.readouterr().err + "".join(record.getMessage() + str(record.exc_info or "")
                                                for record in caplog.records)
    assert "Traceback" not in printed and not any(record.exc_info for record in caplog.records)


def test_a_request_still_open_when_the_server_stops_gets_503_and_no_traceback(shipped, caplog):
    server = lenetkit.server.start_server(shipped, "127.0.0.1", 0)
    server.uvicorn.config.timeout_graceful_shutdown = 0.5  # then the open requests are cancelled
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with socket.create_connection(server.server_address[:2], timeout=10) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nsome")
        time.sleep(0.2)
        server.shutdown()  # as Ctrl-C does, while that body is still coming
        answer = received(slow)
    server.server_close()
    thread.join()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"the server is stopping" in answer
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1", True), ("127.0.0.9", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
    ("192.0.2.1", False), ("::ffff:192.0.2.1", False)])
def test_only_addresses_other_machines_can_reach_are_warned_about(host, loopback):
    assert lenetkit.server.is_loopback(host) is loopback


def test_one_connection_serves_many_requests(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    for _ in range(3):
        connection.request("POST", "/predict", body=SEVEN.read_bytes())
        assert json.loads(connection.getresponse().read())["name"] == "7"
    connection.close()


def test_concurrent_requests_get_the_answers_each_would_get_alone(server):
    digits = [png(Image.fromarray(array)) for array in four_different_digits()]
    alone = [ask(server, "POST", "/predict", digit)[2] for digit in digits]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: ask(server, "POST", "/predict", digits[i % 4])[2],
                                 range(32)))
    for i, answer in enumerate(together):
        assert answer["top"] == alone[i % 4]["top"] and answer["input"] == alone[i % 4]["input"]


def four_different_digits() -> list[np.ndarray]:
    """Four 28x28 digit-like drawings, white on black."""
    images = []
    for k in range(4):
        image = np.zeros((28, 28), np.uint8)
        image[4 + k:24, 12 - k:15 - k] = 255
        image[4 + k:7 + k, 8:20 + k] = 255 if k % 2 else 0
        images.append(image)
    return images


def serves_again(server, tries: int = 20) -> bool:
    """Whether /health answers 200 within about a second. A connection's slot is freed just after
    the close its client sees (and a thread notices a client's close a moment after it), so a
    request at once may still meet a 503."""
    for _ in range(tries):
        status = ask(server, "GET", "/health")[0]
        if status != 503:
            return status == 200
        time.sleep(0.05)
    return False


def test_a_flood_beyond_the_connection_bound_gets_503_at_once(shipped):
    with running(shipped, max_connections=2) as server:
        idle = [socket.create_connection(server.server_address[:2]) for _ in range(2)]
        time.sleep(0.3)  # both are taken by their threads, which wait for a request
        status, headers, content = ask(server, "GET", "/health")
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in content["error"]
        for connection in idle:
            connection.close()
        assert serves_again(server)


def test_in_a_flood_every_request_is_answered_200_or_503_and_the_threads_stay_bounded(shipped):
    with running(shipped, max_connections=4) as server:
        threads_before, threads_seen = threading.active_count(), []

        def client(_) -> int:
            status = ask(server, "GET", "/health")[0]
            threads_seen.append(threading.active_count())
            return status

        with ThreadPoolExecutor(40) as pool:
            statuses = list(pool.map(client, range(200)))
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 4, statuses
        assert max(threads_seen) <= threads_before + 40 + 4  # the clients', and 4 connections'
        assert serves_again(server)


def test_a_silent_client_is_dropped_after_the_timeout_and_its_slot_freed(shipped):
    with running(shipped, max_connections=1, client_timeout=0.5) as server:
        with socket.create_connection(server.server_address[:2]) as silent:
            silent.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 5
        assert serves_again(server)


def test_a_body_that_trickles_in_too_slowly_gets_408(shipped):
    with running(shipped, client_timeout=5, body_deadline=0.5) as server:
        with socket.create_connection(server.server_address[:2], timeout=10) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            # A byte every 0.1 s until the answer comes, and more after it: the server drains
            # them, as a reset for bytes it left unread would drop the answer.
            for _ in range(30):
                slow.sendall(b"x")
                if select.select([slow], [], [], 0.1)[0]:
                    break
            slow.sendall(b"xx")
            slow.shutdown(socket.SHUT_WR)
            answer = received(slow)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"too slowly" in answer


@pytest.fixture(scope="module")
def pooled() -> lenetkit.server.Model:
    with lenetkit.server.Model(PRETRAINED_MODEL_PATH, workers=2) as model:
        yield model


@pytest.mark.slow
def test_in_worker_processes_images_get_the_answers_and_refusals_of_the_servers_threads(
        server, pooled):
    images = [SEVEN.read_bytes(), NINE.read_bytes(),
              *(png(Image.fromarray(array)) for array in four_different_digits())]
    refused = [b"%PDF-1.4 not a digit", png(Image.new("L", (140, 140), 0)),
               png(Image.new("1", (6000, 5000)))]  # not an image, blank, a bomb
    with running(pooled) as in_workers, ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(lambda body: ask(in_workers, "POST", "/predict", body),
                                   images + refused))
    for body, (status, _, answer) in zip(images + refused, answers):
        expected_status, _, expected = ask(server, "POST", "/predict", body)
        assert status == expected_status
        if status == 200:
            assert answer["top"] == expected["top"] and answer["input"] == expected["input"]
        else:
            assert answer == expected
    assert [status for status, _, _ in answers] == [200] * len(images) + [400] * len(refused)


@contextmanager
def one_worker_signalled(signal_number: int, deadline: float):
    """A server whose one worker process has just been sent `signal_number`: yields the model,
    the server and the worker's pid."""
    with lenetkit.server.Model(PRETRAINED_MODEL_PATH, workers=1, deadline=deadline) as model, \
            running(model) as server:
        [pid] = model.pool.pids()
        os.kill(pid, signal_number)
        yield model, server, pid


@pytest.mark.slow
def test_a_worker_process_that_dies_is_replaced_without_losing_a_request():
    # A time limit that leaves room for the new worker to load the model, however busy the machine.
    with one_worker_signalled(signal.SIGKILL, deadline=60) as (model, server, pid):
        still_running([pid])
        status, _, answer = ask(server, "POST", "/predict", SEVEN.read_bytes())
        assert status == 200 and answer["name"] == "7"  # in the worker that replaced it
        assert model.pool.pids() != [pid]


@pytest.mark.slow
def test_a_stalled_worker_process_is_replaced_and_its_request_answered_503():
    with one_worker_signalled(signal.SIGSTOP, deadline=2) as (model, server, pid):
        reason = refusal(server, "POST", "/predict", SEVEN.read_bytes(), expected=503)
        assert "time limit" in reason and "replaced" in reason
        assert still_running([pid]) == []
        deadline = time.monotonic() + 60
        while (answer := ask(server, "POST", "/predict", SEVEN.read_bytes()))[0] != 200:
            assert answer[0] == 503 and time.monotonic() < deadline  # the new one is loading
            time.sleep(0.5)
        assert answer[2]["name"] == "7" and model.pool.pids() != [pid]


def stat(pid: int | str) -> tuple[str, int] | None:
    """A process's state (Z: ended, not yet reaped) and its parent's id, from Linux's /proc; None
    once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    return [int(path.name) for path in Path("/proc").glob("[0-9]*")
            if (found := stat(path.name)) and found[1] == pid and found[0] != "Z"]


def still_running(pids: list[int], seconds: float = 10) -> list[int]:
    """Those of `pids` still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid in pids if (found := stat(pid)) and found[0] != "Z"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def serve_process(workers: int) -> subprocess.Popen:
    """serve.py in a session of its own (as a terminal's job), once it says it serves."""
    # A child would inherit an ignored Ctrl-C (as from a shell's background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "serve.py"), "--port", "0", "--workers",
             str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.stdout.readline().startswith("serving ")
    return process


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("stop", ["Ctrl-C", "kill -9"])
def test_no_worker_process_outlives_the_server(stop):
    """Ctrl-C, which the terminal sends to every process of the server, stops it with one line and
    no traceback; and even a killed server leaves no worker behind."""
    process = serve_process(workers=2)
    workers = children(process.pid)
    assert len(workers) >= 2
    if stop == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.kill()  # the server alone: its workers must notice
    _, stderr = process.communicate(timeout=60)
    if stop == "Ctrl-C":
        assert process.returncode == 130 and stderr.splitlines() == ["interrupted"], stderr
    assert still_running(workers) == []


@pytest.mark.slow
def test_ctrl_c_as_soon_as_the_server_says_it_serves_stops_it_with_one_line():
    """The line comes once it serves: a Ctrl-C before its event loop was built printed a
    traceback after `interrupted`."""
    process = serve_process(workers=0)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.splitlines() == ["interrupted"], stderr


def test_the_number_of_workers_is_checked_before_anything_is_loaded(capsys):
    with pytest.raises(SystemExit):
        lenetkit.server.parse_args(["--workers", "-1"])
    assert "--workers: must be a whole number from 0 to 256" in capsys.readouterr().err


def fashion_model_file(folder: Path) -> Path:
    """A Fashion-MNIST model file (untrained weights: only its classes matter here)."""
    spec = DATASETS["fashion-mnist"]
    torch.manual_seed(0)
    path = folder / "fashion.pth"
    save_model(model_record(build_model("lenet"), "lenet", {}, "fashion-mnist",
                            spec.normalization, list(spec.classes), {}), path)
    return path


def garment_photo() -> Image.Image:
    """A dark garment-shaped block on a light background."""
    photo = Image.new("L", (200, 200), 255)
    photo.paste(60, (50, 30, 150, 170))
    return photo


def test_a_fashion_model_says_its_class_names_and_reads_photos_of_garments(tmp_path):
    model = lenetkit.server.Model(fashion_model_file(tmp_path))
    with running(model) as server:
        status, _, health = ask(server, "GET", "/health")
        assert health["dataset"] == "fashion-mnist" and "Sneaker" in health["classes"]
        assert health["model"] == "fashion.pth"  # outside the project: its name only
        status, _, answer = ask(server, "POST", "/predict", png(garment_photo()))
        assert status == 200 and answer["name"] in health["classes"]
        assert len(answer["top"]) == 10


def test_by_default_the_server_uses_load_models_default_model():
    assert lenetkit.server.parse_args([]).model is None
    assert lenetkit.server.Model(None).path == default_model_path()


@pytest.mark.slow
def test_the_command_line_prints_the_address_and_serves_until_stopped(tmp_path):
    process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "serve.py"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving at http://127.0.0.1:") and "; model: " in line, line
        address = line.split(" at http://", 1)[1].split(";")[0].rstrip("/")
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", "/health")
        assert json.loads(connection.getresponse().read())["status"] == "ok"
        connection.close()
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # no server left behind by a failure
            raise
    assert "Traceback" not in stderr


def test_a_port_out_of_range_is_refused_before_anything_is_loaded(capsys):
    with pytest.raises(SystemExit) as exit:
        lenetkit.server.parse_args(["--port", "70000"])
    assert exit.value.code == 2
    assert "--port: must be a whole number from 0 to 65,535" in capsys.readouterr().err


@pytest.mark.parametrize("args, complaint", [
    (["--model", "/nonexistent/model.pth"], "no file at /nonexistent/model.pth"),
    (["--host", "192.0.2.1", "--port", "0"], "can't listen on 192.0.2.1"),
])
def test_bad_arguments_get_one_clear_line_and_a_failure_status(args, complaint):
    result = run_main("serve.py", *args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert complaint in result.stderr.strip().splitlines()[-1]


def test_a_port_in_use_gets_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_main("serve.py", "--port", str(port), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: can't listen on 127.0.0.1 port {port} (Address already in use)"]


def first_of_each_class(count: int = 10) -> list[tuple[np.ndarray, int]]:
    """The first MNIST test digit of each class, 0 to 9 (or of the first `count` classes)."""
    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    firsts = [int((labels == digit).nonzero()[0]) for digit in range(count)]
    return [(images[i].numpy(), int(labels[i])) for i in firsts]


@pytest.mark.slow
@needs_real_mnist
def test_mnist_digits_drawn_as_the_page_draws_them_are_read_right(server):
    """drawings.py, which the browser test and bench_serve.py draw with, is faithful: the first
    100 test digits traced as pen strokes and sent as the page sends them are read right."""
    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    right = sum(ask(server, "POST", "/predict", drawings.canvas_png(images[i].numpy()))[2]["label"]
                == labels[i] for i in range(100))
    assert right >= 97


@pytest.mark.slow
@needs_real_mnist
def test_the_serving_benchmark_runs_and_prints_its_figures():
    result = run_main("tools/bench_serve.py", "--calls", "20", "--requests", "40", "--clients",
                      "2")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("serve.py on ") and "load average" in lines[0]
    assert any(line.startswith("1 client, 20 requests: the server's time median ")
               for line in lines)
    assert any(line.startswith("2 clients: ") and "(200: 40)" in line for line in lines)


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def browser_missing() -> str | None:
    """Why the browser test can't run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"no {path} (apt-get install chromium chromium-driver)"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None,
                                   reason=browser_missing() or "")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system's packages, driven by its own chromedriver: with both
    paths given, Selenium downloads nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Unpaced frames: headless Chromium otherwise takes each pointer event at its frame rate.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=860,640", "--hide-scrollbars", "--disable-gpu-vsync",
                     "--disable-frame-rate-limit"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def open_page(driver, server) -> None:
    driver.get(lenetkit.server.address_url(server))
    wait_for(driver, "return document.body.dataset.ready === 'true'")


def wait_for(driver, script: str, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(
        lambda d: d.execute_script(script))


def draw(driver, strokes: list[drawings.Stroke], pointer: str = "mouse") -> None:
    """Draws the strokes on the canvas with real pointer input: down, moves, up."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    kind = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN,
            "touch": interaction.POINTER_TOUCH}[pointer]
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=0)
    centre = drawings.CANVAS_SIDE / 2  # moves are given from the element's centre
    for stroke in strokes:
        points = stroke[::3] + stroke[-1:]  # every third point: the canvas draws lines between
        actions.pointer_action.move_to(canvas, points[0][0] - centre, points[0][1] - centre)
        actions.pointer_action.pointer_down()
        for x, y in points[1:]:
            actions.pointer_action.move_to(canvas, x - centre, y - centre)
        actions.pointer_action.pointer_up()
    actions.perform()


def reading(driver) -> str:
    """The class the page shows, once it shows the answer for the image now on the canvas. Each
    poll asks for a frame, as a screen would: headless Chromium encodes canvas.toBlob's PNG in
    the idle time after a frame, and with no frame to follow waits a second for it."""
    wait_for(driver, "requestAnimationFrame(() => {}); "
                     "return document.getElementById('result').dataset.version === "
                     "document.getElementById('canvas').dataset.version")
    return driver.execute_script("return document.getElementById('digit').textContent")


POINTERS = ("mouse", "pen", "touch")  # a finger is a touch pointer


def screenshot_path(tmp_path: Path) -> Path:
    """Where the page's screenshot goes: a temporary file, or $SERVE_SCREENSHOT, which
    regenerates the README's figure:
    SERVE_SCREENSHOT=docs/img/serve.png python -m pytest tests/test_serve.py -k browser"""
    return Path(os.environ.get("SERVE_SCREENSHOT") or tmp_path / "serve.png")


@pytest.mark.slow
@needs_browser
@needs_real_mnist
def test_in_a_browser_digits_drawn_with_the_pointer_and_photos_are_read(server, browser,
                                                                         tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    caption = browser.find_element(By.CSS_SELECTOR, "#result figcaption")
    assert not caption.is_displayed()  # "what the model saw", before it has seen anything
    browser.execute_script(  # which pointers the page saw
        "window.pointerTypes = new Set(); document.getElementById('canvas')."
        "addEventListener('pointerdown', (e) => pointerTypes.add(e.pointerType))")
    read = []
    for index, (digit, _) in enumerate(first_of_each_class()):
        browser.find_element(By.ID, "clear").click()
        draw(browser, drawings.digit_strokes(digit), pointer=POINTERS[index % 3])
        read.append(reading(browser))
    assert sum(name == str(label) for name, label in zip(read, range(10))) >= 9, read
    assert set(browser.execute_script("return [...pointerTypes]")) == set(POINTERS)
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    assert [bar.get_attribute("data-name") for bar in bars] == [str(k) for k in range(10)]
    assert browser.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png")
    assert caption.is_displayed()
    path = screenshot_path(tmp_path)
    write_atomic(path, lambda file: file.write(browser.get_screenshot_as_png()))
    assert Image.open(path).size[0] > 0

    browser.find_element(By.ID, "photo").send_keys(str(SEVEN))
    assert reading(browser) == "7"
    drop_file(browser, NINE)
    assert reading(browser) == "9"
    number = tmp_path / "number.jpg"
    images, _ = load_dataset(REAL_DATA_DIR, train=False, download=False)
    number.write_bytes(photos.encode(*photos.render(images[:4].numpy(), "phone photo", seed=3)))
    drop_file(browser, number)
    assert reading(browser) == Predictor(PRETRAINED_MODEL_PATH).read_number(number).text
    assert browser.find_element(By.ID, "seen").get_attribute("width") == str(4 * 84)


def drop_file(driver, path: Path, then: str = "") -> None:
    """Drops the file on the canvas, as dragging it from a file manager does; `then`, a script
    run at once after, before the page has loaded the file."""
    driver.execute_script("""
        const [name, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    """ + then, path.name, base64.b64encode(path.read_bytes()).decode())


@pytest.mark.slow
@needs_browser
@needs_real_mnist
def test_in_a_browser_a_long_number_fits_a_desktop_window_and_a_phones(server, browser,
                                                                        tmp_path):
    """Its digits and inputs shrink to the page (they pushed a phone's 375 px page sideways),
    and the ten class bars, which say nothing of a number, are hidden."""
    from selenium.webdriver.common.by import By

    images, _ = load_dataset(REAL_DATA_DIR, train=False, download=False)
    number = tmp_path / "number.png"
    number.write_bytes(photos.encode(*photos.render(images[:9].numpy(), "redrawn", seed=0)))
    try:
        for width in (860, 375):  # the tests' window; a phone's
            browser.set_window_size(width, 640)
            open_page(browser, server)
            drop_file(browser, number)
            assert len(reading(browser)) == 9
            assert not browser.find_element(By.ID, "bars").is_displayed()
            assert browser.execute_script("return document.documentElement.scrollWidth <= "
                                          "document.documentElement.clientWidth")
    finally:
        browser.set_window_size(860, 640)


@pytest.mark.slow
@needs_browser
def test_in_a_browser_a_photo_cleared_while_it_loads_stays_off_the_canvas(server, browser):
    """Painted late, it was read with the next drawing."""
    open_page(browser, server)
    browser.execute_script(  # the preview's load revokes its URL, drawn or not: a signal
        "window.revoked = 0; const revoke = URL.revokeObjectURL.bind(URL);"
        "URL.revokeObjectURL = (url) => { window.revoked += 1; revoke(url); };")
    drop_file(browser, NINE, then="document.getElementById('clear').click();")
    wait_for(browser, "return window.revoked > 0")
    assert canvas_ink(browser) == 0


def canvas_ink(driver) -> int:
    """How many colour values on the page's canvas are not black."""
    return driver.execute_script("""
        const canvas = document.getElementById("canvas");
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
        return pixels.data.filter((value, i) => i % 4 !== 3 && value > 0).length;""")


@pytest.mark.slow
@needs_browser
@needs_real_mnist
def test_in_a_browser_a_photo_over_the_servers_limit_is_shrunk_and_read(shipped, browser,
                                                                        tmp_path):
    """A 48 MP phone's JPEG can be over the 8 MiB a body may hold: the page sends it smaller
    (here the limit is lowered, so that a small photo is over it)."""
    from selenium.webdriver.common.by import By

    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    photo, _ = photos.render(images[0].numpy(), "phone photo", seed=0)
    grain = np.random.default_rng(0).normal(0, 12, (2400, 3200, 1))
    large = np.asarray(photo.convert("RGB").resize((3200, 2400)), np.float32) + grain
    path = tmp_path / "large.jpg"
    Image.fromarray(large.clip(0, 255).astype(np.uint8)).save(path, quality=95)
    limit = 1_000_000
    assert path.stat().st_size > limit
    with running(shipped, max_body_bytes=limit) as server:
        open_page(browser, server)
        drop_file(browser, path)
        assert reading(browser) == str(int(labels[0]))
        junk = tmp_path / "photo.heic"  # a format the browser can't decode: not sent at all
        junk.write_bytes(bytes(limit + 1))
        drop_file(browser, junk)
        assert reading(browser) == "?"
        error = browser.find_element(By.ID, "error").text
        assert error.startswith("not an image this browser can read, and over the server's")


@pytest.mark.slow
@needs_browser
def test_in_a_browser_a_right_button_drag_draws_nothing(server, browser):
    """The right button opens the browser's menu; it drew a stroke too."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    canvas = browser.find_element(By.ID, "canvas")
    actions = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"),
                            duration=0)
    actions.pointer_action.move_to(canvas, -60, 0).pointer_down(button=2)
    actions.pointer_action.move_to(canvas, 60, 0).pointer_up(button=2)
    actions.perform()
    assert canvas_ink(browser) == 0
    draw(browser, [[(80, 140), (200, 140)]])  # the left button draws
    assert canvas_ink(browser) > 0


@pytest.mark.slow
@needs_browser
@needs_real_mnist
def test_in_a_browser_a_transparent_photo_is_previewed_on_the_ground_it_is_read_on(
        server, browser, tmp_path):
    """Dark ink on nothing: white paper; light ink on nothing: black (white hid it); a white
    card with dark writing, on nothing: white paper again."""
    open_page(browser, server)
    images, _ = load_dataset(REAL_DATA_DIR, train=False, download=False)
    glyph = Image.fromarray(images[0].numpy()).resize((140, 140))  # a 7, as its alpha
    card = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(card).rectangle((40, 40, 159, 159), fill=(255, 255, 255, 255))
    ImageDraw.Draw(card).line([(65, 60), (135, 60), (90, 145)], fill=(0, 0, 0, 255), width=10)
    for colour, ground in ((0, 255), (255, 0), ("card", 255)):
        path = tmp_path / f"clear-{colour}.png"
        drawn = card if colour == "card" else Image.new("RGBA", glyph.size, (colour,) * 3 + (0,))
        if colour != "card":
            drawn.putalpha(glyph)
        drawn.save(path)
        drop_file(browser, path)
        assert reading(browser) == "7"
        corner = browser.execute_script(
            "return [...document.getElementById('canvas').getContext('2d')"
            ".getImageData(2, 2, 1, 1).data.slice(0, 3)]")
        assert corner == [ground] * 3


@pytest.mark.slow
@needs_browser
def test_in_a_browser_a_digit_drawn_too_small_is_not_read_and_a_tap_leaves_a_dot(server,
                                                                                 browser):
    """A 7 a fifth of the canvas tall is mostly stroke: the model, shown a blob, answered a
    confident 8. A tap drew nothing, and the blank canvas was answered `no digit found`."""
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    corners = [(116, 129), (140, 129), (124, 165)]
    draw(browser, [[(a[0] + (b[0] - a[0]) * t / 12, a[1] + (b[1] - a[1]) * t / 12)
                    for a, b in zip(corners, corners[1:]) for t in range(13)]])
    assert reading(browser) == "?"
    assert browser.find_element(By.ID, "note").text == "too small to read: draw the digit larger"
    assert browser.find_elements(By.CSS_SELECTOR, "#bars li.top") == []  # no answer: no top bar
    browser.find_element(By.ID, "clear").click()
    draw(browser, [[(140, 140)]])
    assert browser.execute_script(
        "return document.getElementById('canvas').getContext('2d')"
        ".getImageData(140, 140, 1, 1).data[0]") == 255


@pytest.mark.slow
@needs_browser
def test_in_a_browser_the_file_button_shows_keyboard_focus(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    button = browser.find_element(By.CSS_SELECTOR, "label.button")
    before = button.value_of_css_property("background-color")
    browser.find_element(By.ID, "clear").send_keys(Keys.TAB)  # from Clear to the file chooser
    assert browser.execute_script("return document.activeElement.id") == "photo"
    assert button.value_of_css_property("background-color") != before


@pytest.mark.slow
@needs_browser
def test_in_a_browser_a_fashion_model_lists_its_classes_and_takes_photos_only(browser,
                                                                              tmp_path):
    from selenium.webdriver.common.by import By

    with running(lenetkit.server.Model(fashion_model_file(tmp_path))) as server:
        open_page(browser, server)
        about = browser.find_element(By.ID, "about").text
        assert "Sneaker" in about and "Ankle boot" in about and "photo" in about
        draw(browser, [[(100, 100), (180, 180)]])
        assert browser.find_element(By.ID, "canvas").get_attribute("data-version") == "0"
        garment = tmp_path / "garment.png"
        garment_photo().save(garment)
        browser.find_element(By.ID, "photo").send_keys(str(garment))
        assert reading(browser) in DATASETS["fashion-mnist"].classes
