"""Response heads, built the way the stratum answers (and cheap to build many thousand times a second).

A ``200`` carries, in this order: ``Server: rcds``, ``Date``, ``Content-Type``,
``Content-Length``, ``Cache-Control``, ``Expires`` (``Date`` + max-age) and ``Connection``.
``.cvmfs*`` root files are ``application/x-cvmfs`` with ``max-age=<root_max_age>``; everything
else is ``application/octet-stream`` with ``public, max-age=<object_max_age>, immutable``.
No ``Last-Modified``, no ``ETag``. Errors are short ``text/plain`` bodies (``404 Not Found\\n``)
with ``Cache-Control: no-store``; ``405`` adds ``Allow: GET, HEAD``. The date strings are
formatted once per second.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

ROOT_CONTENT_TYPE = "application/x-cvmfs"
"""Content type of ``.cvmfs*`` root files."""

OBJECT_CONTENT_TYPE = "application/octet-stream"
"""Content type of everything else (objects)."""

SERVER = "rcds"
"""The ``Server`` header value (no version numbers)."""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim answer to ``Expect: 100-continue``."""

_CONNECTION = {True: b"keep-alive\r\n\r\n", False: b"close\r\n\r\n"}


class Heads:
    """Builds response heads for one server's cache settings.

    ``ok(is_root, size, keep_alive)`` is the hot path: two cached parts around the
    ``Content-Length`` value, refreshed when the second changes.
    """

    def __init__(self, root_max_age: int, object_max_age: int) -> None:
        self.root_max_age = root_max_age
        self.object_max_age = object_max_age
        self._second = -1
        self._next = 0.0  # when the date strings are due again
        self._firsts: tuple[bytes, bytes] = (b"", b"")
        self._rests: tuple[dict[bool, bytes], dict[bool, bytes]] = ({}, {})
        self._date = b""

    def _refresh(self, second: int) -> None:
        date = formatdate(second, usegmt=True)
        firsts, rests = [], []
        for is_root in (False, True):
            if is_root:
                ctype, max_age = ROOT_CONTENT_TYPE, self.root_max_age
                cache = f"max-age={max_age}"
            else:
                ctype, max_age = OBJECT_CONTENT_TYPE, self.object_max_age
                cache = f"public, max-age={max_age}, immutable"
            first = (
                f"HTTP/1.1 200 OK\r\nServer: {SERVER}\r\nDate: {date}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: "
            )
            expires = formatdate(second + max_age, usegmt=True)
            second_half = f"\r\nCache-Control: {cache}\r\nExpires: {expires}\r\nConnection: "
            firsts.append(first.encode("latin-1"))
            rests.append({keep: second_half.encode("latin-1") + _CONNECTION[keep] for keep in (False, True)})
        self._firsts = (firsts[0], firsts[1])
        self._rests = (rests[0], rests[1])
        self._date = date.encode("latin-1")
        self._second = second
        self._next = second + 1.0

    def ok(self, is_root: bool, size: int, keep_alive: bool) -> bytes:
        """The head of a ``200`` for a file of ``size`` bytes."""
        now = time.time()
        if not self._second <= now < self._next:
            self._refresh(int(now))
        return b"%s%d%s" % (self._firsts[is_root], size, self._rests[is_root][keep_alive])

    def error(self, status: HTTPStatus, keep_alive: bool) -> tuple[bytes, bytes]:
        """The head and the body of an error answer (send the body except to ``HEAD``)."""
        second = int(time.time())
        if second != self._second:
            self._refresh(second)
        body = f"{status.value} {status.phrase}\n".encode()
        allow = b"Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else b""
        head = b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n" % (
            status.value,
            status.phrase.encode("latin-1"),
            SERVER.encode(),
            self._date,
        )
        head += b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
        head += b"Cache-Control: no-store\r\n" + allow + b"Connection: " + _CONNECTION[keep_alive]
        return head, body
