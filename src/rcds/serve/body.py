"""Getting file bodies onto the wire without stalling the server's one event loop.

Small bodies are read with ``preadv(RWF_NOWAIT)``: straight from the page cache, or not at
all; a body that would wait for the disk is read in a worker thread instead
(:func:`read_and_close`, called by :meth:`rcds.serve.batch.Batch.read` for a batch of them),
so one cold object does not hold up every other client. Large
bodies go out with ``sendfile`` in chunks (:func:`send_file`), with read-ahead asked for the
next chunk. Either way the bytes come from the descriptor opened for the request, whose size
was taken with ``fstat`` on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from io import FileIO
from typing import Any

SMALL_BODY = 64 * 1024
"""Bodies up to this size are read into memory and written with their head."""

SENDFILE_CHUNK = 1 << 20
"""Bytes per ``sendfile`` round (progress is reported after each, with the bytes sent)."""

_TCP_CORK = getattr(socket, "TCP_CORK", None)
_FADVISE = getattr(os, "posix_fadvise", None)
_nowait = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")


class Deferred:
    """A body answered outside the request loop: an open descriptor and what to send."""

    __slots__ = ("_fd", "is_root", "sendfile", "sent", "size", "started")

    def __init__(self, fd: int, size: int, is_root: bool, sendfile: bool) -> None:
        self._fd, self.size, self.is_root, self.sendfile = fd, size, is_root, sendfile
        self.started = False
        """True once the head went out (with :attr:`sent` bytes of the body, by :func:`send_now`)."""
        self.sent = 0

    @property
    def fd(self) -> int:
        """The descriptor (still owned by this object; -1 once taken or closed)."""
        return self._fd

    def take(self) -> int:
        """The descriptor, now owned by the caller."""
        fd, self._fd = self._fd, -1
        return fd

    def close_when_done(self, task: object) -> None:
        """Done-callback of the task that sends this body: close the descriptor if still ours."""
        self.close()

    def close(self) -> None:
        """Close the descriptor unless it was taken (idempotent)."""
        if self._fd >= 0:
            os.close(self.take())


def read_cached(fd: int, size: int) -> bytes | bytearray | None:
    """The first ``size`` bytes of ``fd`` if the page cache holds them all, else None."""
    global _nowait
    if not _nowait:
        return os.pread(fd, size, 0)
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        _nowait = False  # an old kernel or file system: plain reads from now on
        return os.pread(fd, size, 0)
    return buf if n == size else None  # partly cached, or the file shrank: the thread will tell


def read_and_close(fd: int, size: int) -> bytes:
    """Read up to ``size`` bytes from offset 0 of ``fd`` and close it (runs in a worker thread)."""
    try:
        chunks, got = [], 0
        while got < size:
            data = os.pread(fd, size - got, got)
            if not data:
                break  # the file shrank in place
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def send_now(sock_fd: int, fd: int, start: int, size: int) -> tuple[int, bool]:
    """Send bytes ``start`` to ``size`` of ``fd`` to the non-blocking socket ``sock_fd`` with
    ``sendfile`` while the socket takes them, without waiting; return the offset reached and
    whether the file ended early (it shrank in place: the answer is cut short).

    For a connection whose transport has nothing buffered (the bytes must follow what it
    wrote): a body the socket buffer takes whole costs a system call or two, instead of a task
    and a writer callback of the event loop. Raises :class:`OSError` if the client went away.
    """
    sent = start
    while sent < size:
        try:
            n = os.sendfile(sock_fd, fd, sent, size - sent)
        except (BlockingIOError, InterruptedError):
            return sent, False
        if n <= 0:
            return sent, True
        sent += n
    return sent, False


async def send_file(
    transport: asyncio.Transport,
    head: bytes,
    fd: int,
    size: int,
    progress: Callable[[int], None],
    start: int = 0,
) -> int:
    """Write ``head`` (unless empty), then bytes ``start`` to ``size`` of ``fd`` with ``sendfile``;
    close ``fd``; return the offset reached.

    Raises :class:`OSError` or :class:`RuntimeError` if the client goes away meanwhile.
    """
    sent = start
    sock: Any = transport.get_extra_info("socket")
    with FileIO(fd, "rb", closefd=True) as f:
        _cork(sock, True)  # head and body in as few segments as possible
        try:
            if head:
                transport.write(head)
            loop = asyncio.get_running_loop()
            while sent < size:
                count = min(SENDFILE_CHUNK, size - sent)
                if _FADVISE is not None and sent + count < size:
                    with contextlib.suppress(OSError):
                        _FADVISE(fd, sent + count, SENDFILE_CHUNK, os.POSIX_FADV_WILLNEED)
                n = await loop.sendfile(transport, f, sent, count)
                if n <= 0:
                    break  # the file shrank in place
                sent += n
                progress(n)
        finally:
            _cork(sock, False)
    return sent


def no_delay(sock: Any) -> None:
    """Send small writes at once (no Nagle delay) on a TCP connection.

    asyncio sets ``TCP_NODELAY`` only on sockets whose ``proto`` is ``IPPROTO_TCP``, which an
    accepted socket of a listener made with ``proto=0`` is not. Without it, an answer written
    while an earlier one is not yet acknowledged waits for the client's delayed ACK (up to
    40 ms), as when pipelined answers go out in more than one write.
    """
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cork(sock: Any, on: bool) -> None:
    if _TCP_CORK is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, int(on))
