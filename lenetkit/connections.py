"""The server's HTTP connections: uvicorn's HTTP/1.1 protocol (h11), with what a server open to
strangers needs and uvicorn leaves out: a deadline for each request's line and headers, a bound
on the connections open at once, and the protocol's own refusals in the API's form, one line of
JSON after a status line."""

import asyncio
import json
import logging
import math
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lenetkit.limits import Limits

# The page only loads from this server; it fetches from it and shows data: images.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
BUSY = "the server is busy: try again in a moment"
# A refused body that stops coming for this long is not waited for (as Apache's lingering close).
LINGER_IDLE = 2.0
log = logging.getLogger("lenetkit.server")


def error_json(message: str) -> bytes:
    """Every refusal's body: {"error": "..."}."""
    return json.dumps({"error": message}).encode()


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response refusing a request, for a connection that then closes."""
    body = error_json(message)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
             *(f"{name}: {value}" for name, value in {
                 "Content-Type": "application/json", "Content-Length": str(len(body)),
                 "Connection": "close", "Cache-Control": "no-store", **SECURITY_HEADERS,
                 **(headers or {})}.items())]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def uvicorn_config(app: Any, limits: Limits) -> uvicorn.Config:
    """uvicorn's settings for serving `app` within `limits`: h11, whose limits are set here, and
    the Protocol below; the server's own log lines, only those that say of a problem."""
    config = uvicorn.Config(
        app, http=Protocol, ws="none", lifespan="off", log_config=None, log_level="warning",
        access_log=False, server_header=False, date_header=False,
        h11_max_incomplete_event_size=limits.max_head_bytes,
        timeout_keep_alive=math.ceil(limits.client_timeout), timeout_graceful_shutdown=5)
    config.limits = limits  # type: ignore[attr-defined]  # read by Protocol
    return config


class Protocol(H11Protocol):
    """One connection: HTTP/1.1 keep-alive, so that the page and scripts reuse it; refused at
    once past the bound of connections; closed when a request's head takes longer than its
    deadline (uvicorn has none: a client sending a byte every few seconds would hold it); a
    refused request's body drained before the close (Lingering)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.limits: Limits = self.config.limits  # type: ignore[attr-defined]
        self.head_timer: asyncio.TimerHandle | None = None
        self.over_limit = len(self.connections) > self.limits.max_connections
        self.stopping = False
        self.linger = Lingering(transport, self)
        self.transport = self.linger  # type: ignore[assignment]  # uvicorn's closes too
        self.watch_head()

    def body_may_come(self) -> bool:
        """Whether the client may still be sending the body of a request that was answered
        before it was read (a refusal), and the server goes on serving."""
        return not self.stopping and self.conn.their_state in (h11.SEND_BODY, h11.ERROR)

    def data_received(self, data: bytes) -> None:
        if self.linger.lingering:
            self.linger.heard()  # a refused request's body: dropped
            return
        if self.over_limit:
            # Answered once its request has arrived: a reply written before it, then a close
            # with the request unread, can be lost to a reset.
            self.refuse(503, BUSY, {"Retry-After": "1"})
            return
        if self.head_too_long(data):
            self.refuse(431, f"the request's line and headers are over "
                             f"{self.limits.max_head_bytes:,} bytes")
            return
        super().data_received(data)
        self.watch_head()

    def head_too_long(self, data: bytes) -> bool:
        """Whether the request's head, of which `data` is the latest part, is over the limit. h11
        checks only a head still incomplete after a read, and one read can bring a whole head."""
        if self.conn.their_state is not h11.IDLE:
            return False
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n", 0, self.limits.max_head_bytes + 4)
        return end == -1 and len(buffered) > self.limits.max_head_bytes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch_head()

    def watch_head(self) -> None:
        """Starts the head's deadline when the connection waits for a request (if not started),
        and stops it once the request's head has arrived."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.client_timeout, self.head_late)
        elif not waiting and self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_late(self) -> None:
        """Closes a connection whose request's head did not arrive in time (or an idle one)."""
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # a request begun: an idle connection is no problem
                log.warning("%s: a request's head took over %g s: connection closed",
                            self.client_name(), self.limits.client_timeout)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.linger.stop_lingering()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self.stopping = True  # the server stops: no waiting for a refused body
        self.linger.stop_lingering()
        super().shutdown()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's: a bool
        """The client has sent all it will (a half-close). A request whose body is still due can
        never be read, and is refused; one that is whole is answered, then the connection
        closed."""
        if self.linger.lingering:
            return None  # the refused body has all come: the transport closes
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return None  # nothing to answer: the transport closes
        if self.conn.their_state is h11.SEND_BODY and not cycle.response_started:
            length = dict(self.headers).get(b"content-length", b"?").decode("latin-1")
            self.refuse(400, f"the body ended before its {length} bytes (its Content-Length) "
                             "arrived")
            return None
        cycle.keep_alive = False
        return True

    def _unsupported_upgrade_warning(self) -> None:
        """A request to upgrade (to WebSocket, say) is answered as HTTP, as any other: uvicorn's
        two lines advising a WebSocket library are not for a server that serves none."""

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (uvicorn logs one line): not HTTP/1.1 as h11 reads it."""
        self.refuse(400, "not a valid HTTP/1.1 request", logged=True)

    def refuse(self, status: int, message: str, headers: dict[str, str] | None = None,
               logged: bool = False) -> None:
        """Answers with a refusal, and closes; one line on the server's terminal says so (unless
        uvicorn's has)."""
        if not logged:
            log.warning("%s %d: %s", self.client_name(), status, message)
        if not self.transport.is_closing():
            self.transport.write(refusal(status, message, headers))
            self.transport.close()

    def client_name(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


class Lingering:
    """A connection's transport whose close() first drains a refused request's body.

    A close with bytes of the request unread makes the server's system answer the client's next
    ones with a reset, and the client's system, getting it, drops the refusal sent before it: a
    client that sends a whole body before it reads (Python's urllib and http.client) never sees
    its 413. So while the body may still come, close() sends what was written and then the
    connection's end (write_eof), and drops what arrives until the client closes its side, sends
    nothing for LINGER_IDLE seconds, or the body's deadline passes."""

    def __init__(self, transport: asyncio.Transport, protocol: Protocol) -> None:
        self.transport, self.protocol = transport, protocol
        self.lingering = False
        self.timers: list[asyncio.TimerHandle] = []

    def __getattr__(self, name: str) -> Any:  # write, pause_reading, get_extra_info, ...
        return getattr(self.transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not (self.protocol.body_may_come() and self.transport.can_write_eof()):
            self.transport.close()
            return
        self.lingering = True
        self.transport.write_eof()
        self.transport.resume_reading()
        loop = self.protocol.loop
        self.timers = [loop.call_later(self.protocol.limits.body_deadline, self.stop_lingering),
                       loop.call_later(LINGER_IDLE, self.stop_lingering)]

    def heard(self) -> None:
        """More of the refused body came: the idle wait starts again."""
        if len(self.timers) == 2:  # not stopped
            self.timers[1].cancel()
            self.timers[1] = self.protocol.loop.call_later(LINGER_IDLE, self.stop_lingering)

    def stop_lingering(self) -> None:
        """Closes a lingering connection now (a wait is over, or the server stops)."""
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        if self.lingering:
            self.transport.close()
