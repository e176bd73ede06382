"""Server-sent events (``text/event-stream``) framing, as far as notifications use it.

The broker writes each message as ``data: <one line>\\n\\n`` (as stock's gateway does). The
decoder follows the HTML event-stream rules for what it may meet: ``\\n``, ``\\r\\n`` or ``\\r`` line
ends, ``data:`` lines (one optional space after the colon; several lines joined by ``\\n``), comment
lines starting with ``:`` and other fields ignored, a blank line dispatching the event. A line
longer than ``max_line`` is an :class:`~rcds.errors.InputError` (a broken or hostile server).
"""

from __future__ import annotations

from rcds.errors import InputError

MAX_LINE = 2 << 20


def encode_event(data: bytes) -> bytes:
    """One event carrying ``data``, which must be a single line."""
    if b"\n" in data or b"\r" in data:
        raise InputError("an event-stream data line must not contain line breaks; send compact JSON")
    return b"data: " + data + b"\n\n"


class EventDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get the complete events' data."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = b""
        self._data: list[bytes] = []
        self._cr = False  # the last chunk ended in \r: a following \n belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return the data of every event completed by them."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        buf = self._buf + chunk
        events: list[bytes] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, nl if nl >= 0 else n)
            if cr >= 0:
                end, nxt = cr, cr + (2 if buf[cr + 1 : cr + 2] == b"\n" else 1)
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            self._line(buf[start:end], events)
            start = nxt
        self._buf = buf[start:]
        if len(self._buf) > self.max_line:
            raise InputError(f"an event-stream line exceeds {self.max_line} bytes; the server is broken")
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
