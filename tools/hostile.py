"""Inputs a stranger sends to hurt a server that reads images: what the serving tests and
bench_serve.py's --flood send, made here once.

- many_scans_jpeg: a progressive JPEG whose last scan is repeated, so that decoding it repeats the
  whole image's work once per scan while the file stays small.
- multipart_bomb: a form of many tiny parts, each of which costs a multipart parser its work.
- nested_form: a form whose one file is itself a form, nested many levels deep.

(Slow clients need no making: bench_serve.py's flood sends a request's head a byte at a time.)
"""

import io

from PIL import Image

SOS = b"\xff\xda"  # a JPEG's start-of-scan marker
EOI = b"\xff\xd9"  # its end


def jpeg_segments(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A progressive JPEG split into its head (everything before the first scan), its scans
    (each from its SOS marker to the next scan's, tables between scans included) and its tail
    (the end-of-image marker)."""
    first = data.index(SOS)
    scans, start = [], first
    while (next_scan := data.find(SOS, start + 2)) != -1:
        scans.append(data[start:next_scan])
        start = next_scan
    end = data.rindex(EOI)
    scans.append(data[start:end])
    return data[:first], scans, data[end:]


def many_scans_jpeg(side: int = 256, scans: int = 2000) -> bytes:
    """A gray progressive JPEG of side x side pixels with `scans` scans: Pillow's own, then its
    smallest scan of fine detail repeated. A smooth image's fine detail is nearly all zeros,
    coded in a few bytes, yet a decoder visits every block of the image once per scan."""
    image = Image.radial_gradient("L").resize((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, quality=90)
    head, own, tail = jpeg_segments(buffer.getvalue())
    return head + b"".join(own) + min(own[1:], key=len) * max(0, scans - len(own)) + tail


def multipart_bomb(size: int, boundary: str = "b") -> bytes:
    """A multipart/form-data body of about `size` bytes made of empty fields."""
    part = f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n\r\n".encode()
    return part * (size // len(part)) + f"--{boundary}--\r\n".encode()


def nested_form(depth: int, inner: bytes = b"x") -> tuple[bytes, str]:
    """A form whose file is a form whose file is a form ... `depth` levels deep: the body and
    its Content-Type."""
    body, content_type = inner, "application/octet-stream"
    for level in range(depth):
        boundary = f"level{level}"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f\""
                f"\r\nContent-Type: {content_type}\r\n\r\n").encode() + body + \
            f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    return body, content_type
