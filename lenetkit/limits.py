"""The server's limits, in one place: what a client may send, how fast, and how many at once
(docs/serving.md lists them with the answers a client gets past each)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """The bounds that keep one client, or a flood of them, from stopping the server.

    - max_body_bytes: a phone photo is a few megabytes; a larger body is refused (413) before it
      is read.
    - max_head_bytes: a request's line and headers; a browser's are well under this (431 past it).
    - max_form_fields: fields of a multipart form besides its one file (each costs the parser
      work); max_field_bytes: the size of each.
    - max_connections: connections open at once; one more is answered 503 and closed. Waiting
      connections cost the server little; the bound keeps it within its file descriptors.
    - client_timeout: a request's line and headers must arrive whole within this time, however
      slowly their bytes trickle in; an idle kept-alive connection is closed after it too.
    - body_deadline: a body must arrive whole within this time.
    """

    max_body_bytes: int = 8 * 2**20
    max_head_bytes: int = 16 * 2**10
    max_form_fields: int = 16
    max_field_bytes: int = 2**16
    max_connections: int = 512
    client_timeout: float = 10.0
    body_deadline: float = 30.0
