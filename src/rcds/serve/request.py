"""Parsing HTTP/1.x request heads out of a byte buffer, the way ``http.server`` reads them.

:func:`next_request` finds the next complete request head in a buffer that may hold several
(pipelining) or only part of one, and returns what the server needs to answer it: method,
raw target, whether the connection stays open afterwards. Request bodies are never read: a
request announcing one is answered and then the connection is closed. Lines end with
``\\n`` (an optional ``\\r`` before it is dropped); the head ends with an empty line.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

MAX_REQUEST_LINE = 8190
"""Longest request line accepted (bytes, without the line end); longer ones get 414 and a close."""

MAX_HEADER_LINE = 8190
"""Longest header line accepted; longer ones get 431 and a close."""

MAX_HEADERS = 100
"""Most header fields accepted in one request; more get 431 and a close."""

MAX_HEAD = 65536
"""Most bytes of one request head (request line and headers); more get 431 and a close."""


@dataclass(slots=True)
class Request:
    """One parsed request head (or a head that must be refused with :attr:`error`)."""

    method: str
    """The method as sent (``"-"`` if the request line could not be split)."""
    target: str
    """The raw request target (second word of the request line, or ``""``)."""
    keep_alive: bool
    """False if the connection must be closed after the answer."""
    error: HTTPStatus | None = None
    """Set if the head is malformed or too large: answer with this status, then close."""
    http11: bool = False
    """True for HTTP/1.1 (and later 1.x) requests."""
    expect_continue: bool = False
    """``Expect: 100-continue`` on an HTTP/1.1 request (``http.server`` answers ``100`` first)."""


def next_request(buf: bytes, pos: int) -> tuple[Request | None, int]:
    """Parse the request head starting at ``buf[pos]``; return it and the offset just after it.

    Returns ``(None, pos)`` if the head is not complete yet, and ``(None, -1)`` if the request
    line is empty (``http.server`` closes such connections without an answer). A request with
    :attr:`Request.error` set consumes the rest of the buffer: the connection is closed after it.
    """
    end = buf.find(b"\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_REQUEST_LINE:
            return Request("-", "", False, HTTPStatus.REQUEST_URI_TOO_LONG), len(buf)
        return None, pos
    if end - pos > MAX_REQUEST_LINE + 1:
        return Request("-", "", False, HTTPStatus.REQUEST_URI_TOO_LONG), len(buf)
    words = str(buf[pos:end], "iso-8859-1").rstrip("\r\n").split()
    if not words:
        return None, -1
    request = _parse_request_line(words)
    if request.error is not None:
        return request, len(buf)
    headers: list[bytes] = []
    start = end + 1
    while True:
        end = buf.find(b"\n", start)
        if end < 0:
            if len(buf) - start > MAX_HEADER_LINE or len(buf) - pos > MAX_HEAD:
                return _too_large(request), len(buf)
            return None, pos
        line = buf[start:end]
        start = end + 1
        if not line or line == b"\r":
            break
        headers.append(line)
        if len(line) > MAX_HEADER_LINE + 1 or len(headers) > MAX_HEADERS or start - pos > MAX_HEAD:
            return _too_large(request), len(buf)
    if headers:
        _apply_headers(request, headers)
    return request, start


def _too_large(request: Request) -> Request:
    return Request(request.method, request.target, False, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)


def _parse_request_line(words: list[str]) -> Request:
    """The request line's verdict, as ``BaseHTTPRequestHandler.parse_request`` reaches it."""
    target = words[1] if len(words) >= 2 else ""
    keep_alive = False
    if len(words) >= 3:
        version = words[-1]
        if version == "HTTP/1.1":
            major, minor = 1, 1
        elif version == "HTTP/1.0":
            major, minor = 1, 0
        else:
            parsed = _parse_version(version)
            if parsed is None:
                return Request("-", target, False, HTTPStatus.BAD_REQUEST)
            major, minor = parsed
        if major >= 2:
            return Request("-", target, False, HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
        keep_alive = (major, minor) >= (1, 1)
    if not 2 <= len(words) <= 3:
        return Request("-", target, False, HTTPStatus.BAD_REQUEST)
    method = words[0]
    if len(words) == 2 and method != "GET":  # HTTP/0.9 knows GET only
        return Request("-", target, False, HTTPStatus.BAD_REQUEST)
    return Request(method, target, keep_alive, http11=keep_alive)


def _parse_version(version: str) -> tuple[int, int] | None:
    if not version.startswith("HTTP/"):
        return None
    numbers = version[5:].split(".")
    if len(numbers) != 2 or not all(n.isdigit() and n.isascii() and len(n) <= 10 for n in numbers):
        return None
    return int(numbers[0]), int(numbers[1])


def _apply_headers(request: Request, lines: list[bytes]) -> None:
    """Apply ``Connection``, ``Content-Length``, ``Transfer-Encoding`` and ``Expect``."""
    seen: set[bytes] = set()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            continue  # an obsolete folded continuation: no field we act on is ever folded
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name in seen:
            continue  # the first field of a name counts, as with email.message.Message.get
        seen.add(name)
        if name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                request.keep_alive = False
            elif b"keep-alive" in tokens:
                request.keep_alive = True
        elif name == b"content-length":
            if value.strip() not in (b"", b"0"):
                request.keep_alive = False  # a body we do not read would be taken for a request
        elif name == b"transfer-encoding":
            request.keep_alive = False
        elif name == b"expect":
            request.expect_continue = request.http11 and value.strip().lower() == b"100-continue"
