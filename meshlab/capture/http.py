"""HTTP/1.x read straight from a byte stream, the way anyone on the path could read it.

A stream is read message by message: a request (or status) line at the start of the stream,
headers up to the blank line, then a body whose length comes from Content-Length or chunked
encoding. The next message must start right after; anything else ends the reading. Input
is never trusted: bad or cut-short bytes end the reading, they never raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) ([!-~]{1,8000}) (HTTP/1\.[01])\r\n"
)
STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([1-5][0-9][0-9])(?: ([^\r\n]{0,1000}))?\r\n")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEADERS = 64 * 1024


@dataclass
class HttpMessage:
    """One HTTP/1.x message found at ``offset`` of a direction's byte stream."""

    offset: int
    start_line: str  # "GET /hello HTTP/1.1" or "HTTP/1.1 200 OK"
    line_end: int  # offset just after the start line's CRLF
    headers_end: int | None  # offset just after the blank line; None when cut short
    end: int  # offset after the body (or where the bytes ran out)
    headers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False

    @property
    def method(self) -> str | None:
        first = self.start_line.split(" ", 1)[0]
        return None if first.startswith("HTTP/") else first

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ", 2)
        if parts[0].startswith("HTTP/") and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
        return None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def starts_like_http(data: bytes) -> bool:
    return bool(REQUEST_LINE.match(data) or STATUS_LINE.match(data))


def read_messages(data: bytes, kind: str, request_methods: list[str] | None = None) -> list[
    HttpMessage
]:
    """The HTTP messages at the start of ``data``; ``kind`` is "request" or "response".

    ``request_methods`` (the methods of the requests on the other side, in order) lets a
    response to HEAD be read as having no body.
    """
    pattern = REQUEST_LINE if kind == "request" else STATUS_LINE
    messages: list[HttpMessage] = []
    pos = 0
    while pos < len(data):
        match = pattern.match(data, pos)
        if not match:
            break
        line = match.group(0)[:-2].decode("latin-1")
        message = HttpMessage(pos, line, match.end(), None, len(data))
        messages.append(message)
        blank = data.find(b"\r\n\r\n", match.end() - 2, match.end() + MAX_HEADERS)
        if blank < 0:
            break
        message.headers_end = blank + 4
        message.headers = _headers(data[match.end() : blank])
        head_method = None
        if kind == "response" and request_methods and len(messages) <= len(request_methods):
            head_method = request_methods[len(messages) - 1]
        body_end = _body_end(data, message, kind, head_method)
        if body_end is None:
            break
        message.end = body_end
        message.complete = True
        pos = body_end
    return messages


def _headers(block: bytes) -> list[tuple[str, str]]:
    headers = []
    for raw in block.split(b"\r\n"):
        name, sep, value = raw.partition(b":")
        if sep and name and not name[:1].isspace():
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return headers


def _body_end(data: bytes, message: HttpMessage, kind: str, request_method: str | None) -> (
    int | None
):
    """Where the body ends, or None when it is cut short or runs until the connection closes."""
    start = message.headers_end
    assert start is not None
    status = message.status
    if kind == "response" and (
        request_method == "HEAD" or (status is not None and (status < 200 or status in (204, 304)))
    ):
        return start
    encoding = (message.header("transfer-encoding") or "").lower()
    if "chunked" in encoding:
        return _chunked_end(data, start)
    length = message.header("content-length")
    if length is not None:
        if not length.strip().isdigit():
            return None
        end = start + int(length)
        return end if end <= len(data) else None
    if kind == "request":
        return start
    # A response without a length runs until the server closes the connection.
    message.end = len(data)
    return None


def _chunked_end(data: bytes, pos: int) -> int | None:
    while True:
        line_end = data.find(b"\r\n", pos, pos + 1024)
        if line_end < 0:
            return None
        size_text = data[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        pos = line_end + 2
        if size == 0:
            # trailers, then the final blank line
            end = data.find(b"\r\n\r\n", pos - 2, pos + MAX_HEADERS)
            return end + 4 if end >= 0 else None
        pos += size + 2
        if pos > len(data):
            return None
