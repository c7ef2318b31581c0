"""The server's API and page, as a FastAPI application: GET / (and its script and style sheet),
GET /health, POST /predict, and the OpenAPI description FastAPI writes (/openapi.json). Every
refusal is a 4xx or 5xx with one line of JSON, {"error": "..."}; the image is read off the event
loop (workers.Model), so that /health and small requests are answered meanwhile."""

import asyncio
import json
import logging
import time

import anyio
from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from lenetkit import __version__
from lenetkit.connections import BUSY, SECURITY_HEADERS, error_json
from lenetkit.environment import PACKAGE_DIR
from lenetkit.errors import UserError
from lenetkit.limits import Limits
from lenetkit.preprocess import ImageError
from lenetkit.workers import Busy, Model, Unfinished

STATIC_DIR = PACKAGE_DIR / "static"
# The page's files by path: nothing else on disk is ever served.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
# The methods HTTP defines for a resource; any other is answered 501, as for no server it knows.
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
# Without workers a thread can't be stopped: the request waits for it this much past the limit.
DEADLINE_GRACE_S = 1.0
ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}
PREDICT_DOC = {
    "requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"}}}}}},
}
PREDICT_REFUSALS = {
    400: "not an image; nothing to read in it; too much work to decode; an empty body; a form "
         "without a file, or past its limits",
    408: "a body that took too long to arrive",
    411: "no Content-Length (chunked bodies are not taken)",
    413: "a body over the limit (/health's max_body_bytes), refused before it is read",
    503: "busy (Retry-After: 1), or the image took longer than the time limit",
}
log = logging.getLogger("lenetkit.server")


class RequestError(Exception):
    """A request the server refuses: its HTTP status, a one-line reason, and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def create_app(model: Model, limits: Limits) -> FastAPI:
    """The application answering for `model` within `limits`. FastAPI's documentation pages are
    left out: they load their scripts from a CDN, and the page works offline."""
    app = FastAPI(title="lenetkit: read a digit", version=__version__, docs_url=None,
                  redoc_url=None, redirect_slashes=False,
                  description="Draw a digit, or send a photo, and read it with the model.")
    app.state.model, app.state.limits, app.state.page = model, limits, page_files()
    for path in STATIC:
        app.add_api_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"],
                      summary="Which model answers, the classes it knows, the body's limit")
    # HEAD wherever GET is (monitors and `curl -I` ask with it); the schema lists GET alone.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/predict", predict, methods=["POST"], openapi_extra=PREDICT_DOC,
                      summary="Read one image: its bytes as the body, or a form with one file",
                      responses={status: {"description": text, **ERROR}
                                 for status, text in PREDICT_REFUSALS.items()})
    app.add_exception_handler(HTTPException, refused_by_router)  # type: ignore[arg-type]
    return app


def page_files() -> dict[str, bytes]:
    """The page's files by name, read once."""
    try:
        return {name: (STATIC_DIR / name).read_bytes() for name, _ in STATIC.values()}
    except OSError as error:
        raise UserError(f"the page's files are not in {STATIC_DIR} ({error})") from None


def reply(status: int, content: dict, headers: dict[str, str] | None = None) -> Response:
    """An answer in JSON; after a refusal the connection closes, as a body may be unread."""
    if status >= 400:
        headers = {**(headers or {}), "Connection": "close"}
    body = error_json(content["error"]) if set(content) == {"error"} else json.dumps(content)
    return Response(body, status, {"Cache-Control": "no-store", **SECURITY_HEADERS,
                                   **(headers or {})}, media_type="application/json")


def refuse(request: Request, status: int, message: str,
           headers: dict[str, str] | None = None) -> Response:
    """A refusal, and its one line on the server's terminal."""
    log.warning("%s %s %d: %s", request.method, request.url.path, status, message)
    return reply(status, {"error": message}, headers)


async def page(request: Request) -> Response:
    name, content_type = STATIC[request.url.path]
    return Response(request.app.state.page[name], media_type=content_type,
                    headers={"Cache-Control": "no-cache", **SECURITY_HEADERS})


async def health(request: Request) -> Response:
    state = request.app.state
    return reply(200, {**state.model.info(), "max_body_bytes": state.limits.max_body_bytes})


async def predict(request: Request) -> Response:
    """The prediction for the request's image; every failure a refusal, never a traceback."""
    model: Model = request.app.state.model
    started = time.perf_counter()
    try:
        image_file = await request_image(request, request.app.state.limits)
        future = asyncio.wrap_future(model.submit(image_file))
        answer = await asyncio.wait_for(future, model.deadline + DEADLINE_GRACE_S)
    except RequestError as error:
        return refuse(request, error.status, str(error), error.headers)
    except ImageError as error:
        return refuse(request, 400, str(error))
    except Busy:
        return refuse(request, 503, BUSY, {"Retry-After": "1"})
    except Unfinished as error:
        return refuse(request, 503, str(error))
    except asyncio.TimeoutError:
        return refuse(request, 503, f"reading the image took over the server's time limit of "
                                    f"{model.deadline:g} s")
    except ClientDisconnect:
        return refuse(request, 400, "the client hung up before its body arrived")
    except asyncio.CancelledError:  # stopped (Ctrl-C) while this one still read or waited
        return refuse(request, 503, "the server is stopping: send it again once it is back")
    except Exception as error:  # noqa: BLE001 -- one request's failure must not stop the server
        return refuse(request, 500, f"the server failed ({type(error).__name__}: {error})")
    return reply(200, {**answer, "milliseconds": 1000 * (time.perf_counter() - started)})


async def request_image(request: Request, limits: Limits) -> bytes:
    """The request's image file: its body, or the file in its multipart form. The length is
    checked before anything is read (h11 has checked that it is one number)."""
    if "transfer-encoding" in request.headers:
        raise RequestError(411, "send the image with a Content-Length (chunked transfer "
                                "encoding is not supported)")
    if "content-length" not in request.headers:
        raise RequestError(411, "the request has no Content-Length: send the image file's "
                                "bytes as the body, with their length")
    length = int(request.headers["content-length"])
    if length > limits.max_body_bytes:
        raise RequestError(413, f"the body is {length:,} bytes, over the limit of "
                                f"{limits.max_body_bytes:,}: send a smaller image")
    if length == 0:
        raise RequestError(400, "the body is empty: send an image file's bytes (PNG, JPEG, ...)")
    try:
        with anyio.fail_after(limits.body_deadline):
            body = await request.body()
    except TimeoutError:
        raise RequestError(408, f"the body came too slowly (not whole after "
                                f"{limits.body_deadline:g} s)") from None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await form_file(request, limits)
    return body


async def form_file(request: Request, limits: Limits) -> bytes:
    """The one file of a multipart/form-data body (as `curl -F image=@digit.png` sends), parsed
    within the form's limits."""
    try:
        form = await request.form(max_files=1, max_fields=limits.max_form_fields,
                                  max_part_size=limits.max_field_bytes)
    except HTTPException as error:  # python-multipart's refusal, through Starlette
        raise RequestError(400, f"the form can't be read ({error.detail})") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                return await value.read()
    finally:
        await form.close()
    raise RequestError(400, "the form holds no file: send the image as a file field "
                            "(curl -F image=@digit.png), or the file's bytes as the body")


async def refused_by_router(request: Request, error: HTTPException) -> Response:
    """The router's refusals (no such path, the wrong method) in the API's form."""
    path, method = request.url.path, request.method
    if error.status_code == 404:
        return refuse(request, 404, f"no such path: {path} (the API is GET /health and POST "
                                    "/predict; the page is at /)")
    if error.status_code == 405 and method not in KNOWN_METHODS:
        return refuse(request, 501, f"Unsupported method ({method!r})")
    if error.status_code == 405:
        allowed = ", ".join(name for name in (error.headers or {}).get("Allow", "").split(", ")
                            if name != "HEAD")
        return refuse(request, 405, f"{method} is not allowed on {path}: use {allowed}",
                      {"Allow": allowed})
    return refuse(request, error.status_code, str(error.detail), dict(error.headers or {}))
