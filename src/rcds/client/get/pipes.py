"""The worker's ends of its two pipes, in the framing of :class:`multiprocessing.connection.Connection`.

The parent (:class:`rcds.workerproc.WorkerProcess`) talks through ``multiprocessing``
connections: each message is a pickle preceded by its length (4 bytes, big-endian, signed; ``-1``
and 8 more bytes when it does not fit). A ``rcds get`` worker reads and writes that framing itself
with :mod:`pickle` and :func:`os.read`/:func:`os.write`, so that it does not import
``multiprocessing`` (~15% of its start-up CPU).
"""

from __future__ import annotations

import os
import pickle
import struct

__all__ = ["Receiver", "Sender"]

_SIZE = struct.Struct("!i")
_LARGE = struct.Struct("!Q")


class Receiver:
    """Reads pickled messages from a pipe (the read end ``fd``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _exactly(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n:
            chunk = os.read(self.fd, n)
            if not chunk:
                raise EOFError
            parts.append(chunk)
            n -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def recv(self) -> object:
        """The next message; :class:`EOFError` at end of file."""
        (size,) = _SIZE.unpack(self._exactly(4))
        if size == -1:
            (size,) = _LARGE.unpack(self._exactly(8))
        return pickle.loads(self._exactly(size))


class Sender:
    """Writes pickled messages to a pipe (the write end ``fd``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: object) -> None:
        """Write ``message`` whole (:class:`BrokenPipeError` if the reader is gone)."""
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        n = len(data)
        head = _SIZE.pack(n) if n <= 0x7FFFFFFF else _SIZE.pack(-1) + _LARGE.pack(n)
        view = memoryview(head + data)
        while view:
            view = view[os.write(self.fd, view) :]
