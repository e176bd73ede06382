"""Answers that wait for the disk, gathered so that one worker-thread job reads them all.

A small body not in the page cache (:func:`~rcds.serve.body.read_cached` says so) is read in a
worker thread. Rather than one thread hand-off per such file, with the connection's later
pipelined requests stalled behind each, the connection answers the requests that follow it in
its buffer as well and collects the answers, in request order, in a :class:`Batch`: those
ready at once (``HEAD``, errors, empty files, bodies found in the page cache) as bytes, and
every other small body as a descriptor opened exactly as for any request. The page cache is
tried for the following requests as long as at most a quarter of those tried missed (a cold
file among warm ones, as the kernel's eviction leaves a tree); after that it is not even tried
(:func:`~rcds.serve.answer.answer_to` with ``defer=True``: a cold tree, the job reads them
anyway). One job
(:meth:`Batch.read`) first asks for all of them with ``POSIX_FADV_WILLNEED``, so that the disk
works on them together, then reads them one after the other; the connection then writes the
answers in order.

A batch takes requests while it holds less than :data:`READ_AHEAD` bytes of answers and fewer
than :data:`MAX_COLD` descriptors; it ends at a request that ends the connection (its answer
is the last), and at a body above :data:`~rcds.serve.body.SMALL_BODY`, which is sent with
``sendfile`` after the batch's answers (:attr:`Batch.tail`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from rcds.serve.answer import Ready
from rcds.serve.body import Deferred, read_and_close
from rcds.serve.request import Request

READ_AHEAD = 1 << 20
"""A batch takes no further request once its answers hold this many bytes (bodies and heads)."""

MAX_COLD = 32
"""Most descriptors of bodies to read that one batch keeps open."""

HEAD_BYTES = 256
"""What one answer's head is counted as towards :data:`READ_AHEAD`."""

_FADVISE = getattr(os, "posix_fadvise", None)


class Unread:
    """A batch entry whose body :meth:`Batch.read` reads (into :attr:`data`)."""

    __slots__ = ("data", "later")

    def __init__(self, later: Deferred) -> None:
        self.later = later
        self.data = b""


class Batch:
    """Answers to consecutive pipelined requests, in order, some of them waiting for the disk.

    The event loop adds entries and, once :meth:`read` has run in a worker thread, writes
    them; :meth:`close` (idempotent, from the loop) closes whatever descriptor is still open,
    and a :meth:`read` that has not started by then does nothing.
    """

    __slots__ = ("_closed", "_lock", "entries", "held", "tail", "unread")

    def __init__(self) -> None:
        self.entries: list[tuple[Request, bool, Ready | Unread]] = []
        """``(request, 100-continue first, answer)`` per request, in request order."""
        self.unread: list[Unread] = []
        """The entries whose bodies :meth:`read` reads."""
        self.tail: tuple[Request, Deferred] | None = None
        """A last request whose large body is sent with ``sendfile`` after the entries."""
        self.held = 0
        self._lock = threading.Lock()
        self._closed = False

    def has_room(self) -> bool:
        """True while another request may join (no tail, below both limits)."""
        return self.tail is None and len(self.unread) < MAX_COLD and self.held < READ_AHEAD

    def add(self, request: Request, expect_continue: bool, answer: Ready | Deferred) -> bool:
        """Append the answer to ``request``; True if later requests may follow it into this batch."""
        self.held += HEAD_BYTES
        if isinstance(answer, tuple):  # ready
            self.entries.append((request, expect_continue, answer))
            self.held += answer[2]
            return answer[3]
        if answer.sendfile:
            self.tail = (request, answer)
            return False
        unread = Unread(answer)
        self.entries.append((request, expect_continue, unread))
        self.unread.append(unread)
        self.held += answer.size
        return request.keep_alive

    def first_request(self) -> Request | None:
        """The request whose answer goes out first."""
        if self.entries:
            return self.entries[0][0]
        return self.tail[0] if self.tail is not None else None

    def read(self) -> None:
        """Read every unread body (in a worker thread), closing each descriptor.

        Does nothing if :meth:`close` came first. Raises :class:`OSError` on a read error
        (every descriptor is closed all the same). A body shorter than its size (the file
        shrank in place) is kept short: the connection closes after it.
        """
        with self._lock:
            if self._closed:
                return
            fds = [u.later.take() for u in self.unread]
        try:
            if _FADVISE is not None and len(fds) > 1:
                for unread, fd in zip(self.unread, fds, strict=True):
                    with contextlib.suppress(OSError):
                        _FADVISE(fd, 0, unread.later.size, os.POSIX_FADV_WILLNEED)
            for i, unread in enumerate(self.unread):
                fd, fds[i] = fds[i], -1
                unread.data = read_and_close(fd, unread.later.size)
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

    def close(self) -> None:
        """Close every descriptor not yet read or sent (idempotent)."""
        with self._lock:
            self._closed = True
            for unread in self.unread:
                unread.later.close()
        if self.tail is not None:
            self.tail[1].close()

    def close_when_done(self, task: object) -> None:
        """Done-callback of the task that sends this batch."""
        self.close()

    def __iter__(self) -> Iterator[tuple[Request, bool, Ready | Unread]]:
        return iter(self.entries)
