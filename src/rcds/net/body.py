"""Reading one response body from a :class:`~rcds.net.http1.Connection`, with every check.

Bodies are length-delimited, chunked, or end at EOF. While streaming them to the caller's
``write``, the reader enforces the stall timeout (the socket timeout), the low-speed limit
and the size limit, and turns every problem into :class:`~rcds.net.failures.AttemptError`
with the classification of the urllib3 transport (short transfers and stalls are transient
and blamed on the proxy, or on the host when direct; an oversized body is bad data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from rcds.net.failures import AttemptError, Failure, Outcome, describe_exception

if TYPE_CHECKING:
    from rcds.net.http1 import Connection

MAX_CHUNK_LINE = 4096

Clock = Callable[[], float]


class BodyLimits(NamedTuple):
    """How a body is read: stall timeout (s), low-speed limit (B/s, 0 = off), size limit."""

    stall: float
    low_speed_limit: int
    max_size: int | None
    monotonic: Clock = time.monotonic


def ignore(_data: bytes) -> None:
    """A ``write`` that drops the data (draining error bodies)."""
    return None


class BodyReader:
    """Streams one body of ``conn`` to ``write`` with the stall, low-speed and size checks.

    Bytes after the body (the next pipelined response) are given back to ``conn``.
    """

    __slots__ = ("conn", "expected", "limits", "received", "window_bytes", "window_start", "write")

    def __init__(
        self, conn: Connection, write: Callable[[bytes], object], limits: BodyLimits, length: int | None
    ) -> None:
        self.conn = conn
        self.write = write
        self.limits = limits
        self.received = 0
        self.expected = f" of {length}" if length is not None else ""
        self.window_start = limits.monotonic()
        self.window_bytes = 0

    def _recv(self) -> bytes:
        """The next received bytes; b"" at EOF. Errors become classified failures."""
        conn = self.conn
        try:
            return conn.recv()
        except TimeoutError as exc:
            stall, got = self.limits.stall, f"{self.received}{self.expected}"
            reason = f"transfer stalled: no data for {stall:g} s after {got} bytes"
            raise AttemptError(Failure(conn.blame, reason, True)) from exc
        except OSError as exc:
            reason = f"short transfer: {self.received}{self.expected} bytes, then {describe_exception(exc)}"
            raise AttemptError(Failure(conn.blame, reason, True)) from exc

    def _more(self) -> bytes:
        """Buffered bytes, else the next received ones; b"" at EOF."""
        return self.conn.take() or self._recv()

    def _deliver(self, data: bytes) -> None:
        self.received += len(data)
        limits = self.limits
        if limits.max_size is not None and self.received > limits.max_size:
            reason = f"body exceeds the limit of {limits.max_size} bytes"
            raise AttemptError(Failure(Outcome.BAD_DATA, reason))
        self.write(data)
        if limits.low_speed_limit:
            self.window_bytes += len(data)
            now = limits.monotonic()
            elapsed = now - self.window_start
            if elapsed >= limits.stall:
                if self.window_bytes < limits.low_speed_limit * elapsed:
                    rate = self.window_bytes / elapsed
                    reason = f"too slow: {rate:.0f} B/s, below the limit of {limits.low_speed_limit} B/s"
                    raise AttemptError(Failure(self.conn.blame, reason, True))
                self.window_start, self.window_bytes = now, 0

    def _short(self, what: str) -> AttemptError:
        reason = f"short transfer: {self.received}{self.expected} bytes, {what}"
        return AttemptError(Failure(self.conn.blame, reason, True))

    def _exactly(self, size: int, what: str) -> None:
        """Deliver the next ``size`` bytes; the rest goes back to the connection."""
        while size:
            data = self._more()
            if not data:
                raise self._short(f"then the connection was closed ({what})")
            if size < len(data):
                self.conn.unread(data[size:])
                data = data[:size]
            self._deliver(data)
            size -= len(data)

    def plain(self, length: int | None) -> int:
        """A body of ``length`` bytes, or (``None``) everything up to EOF."""
        if length is not None:
            self._exactly(length, "Content-Length")
            return self.received
        while data := self._more():
            self._deliver(data)
        return self.received

    def _line(self, eof_ok: bool = False) -> bytes:
        """The next CRLF- (or LF-) terminated line, without its end."""
        buf = self.conn.take()
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                self.conn.unread(buf[end + 1 :])
                return buf[:end].rstrip(b"\r")
            if len(buf) > MAX_CHUNK_LINE:
                raise AttemptError(Failure(self.conn.blame, "invalid response: chunk header too long", True))
            data = self._recv()
            if not data:
                if eof_ok:  # the body is complete; the connection cannot be reused
                    self.conn.close()
                    return b""
                raise self._short("then the connection was closed (chunked)")
            buf += data

    def chunked(self) -> int:
        """A ``Transfer-Encoding: chunked`` body (chunk extensions and trailers are dropped)."""
        blame = self.conn.blame
        while True:
            line = self._line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError(line)
            except ValueError:
                shown = line[:40]
                reason = f"invalid response: bad chunk size {shown!r}"
                raise AttemptError(Failure(blame, reason, True)) from None
            if size == 0:
                while self._line(eof_ok=True):  # trailers
                    pass
                return self.received
            self._exactly(size, "chunked")
            if self._line():
                raise AttemptError(Failure(blame, "invalid response: chunk not followed by CRLF", True))
