"""Publishing an upload while it streams in: the publish worker reads the spool file as it grows.

When an upload begins and a repository worker is idle with nothing queued, the worker takes the
upload at once (a *live* job). It reads the upload's spool file (``spool/incoming/<random>.part``)
as the web handler appends to it, so inflating, chunking, compressing and writing objects overlap
the transfer instead of following it. Objects are named by their content, so writing them early
is harmless. The new revision is committed only once the whole upload has arrived and its
content hash matched the CID (:meth:`LiveFeed.wait_verified`). An upload that is cut off or does
not match its CID ends the ingest with an error before the commit: the repository is unchanged,
and the objects already written are unreferenced garbage for ``gc`` (a later upload of the same
content reuses them).

A live job gives way: whenever its worker waits for more data while another upload is queued,
its repository is due for a cleanup or the service stops, the worker abandons the ingest
(:class:`GaveWayError`) and the upload is queued as usual once it is complete, so a slow client never
holds a repository that others wait for.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from rcds.errors import InputError, RcdsError

__all__ = ["GaveWayError", "LiveFeed", "LiveReader"]

POLL_SECONDS = 0.1
"""How often a waiting reader looks whether it should give way."""
STALL_SECONDS = 300.0
"""A live job whose upload has not moved for this long is given back (the web handler drops an
upload idle for 120 s; this only guards against a handler that vanished without a word)."""


class GaveWayError(RcdsError):
    """A live ingest stopped waiting for its upload so that others can publish first."""


class _State(Enum):
    RECEIVING = "receiving"
    VERIFIED = "verified"  # complete, and its content hash matches the CID
    DONE = "done"  # verified, durable, and moved into the queue directory
    ABORTED = "aborted"


class LiveFeed:
    """What a live job knows of its upload: bytes on disk so far and the upload's verdict.

    The web handler's :class:`~rcds.service.spool.Upload` reports (:meth:`grew`, :meth:`verified`,
    :meth:`done`, :meth:`aborted`); the publish worker reads (:meth:`reader`) and waits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._size = 0
        self._state = _State.RECEIVING
        self._item: Any = None
        self._released = False
        self._moved = time.monotonic()
        self.repository: str | None = None
        """The repository whose worker took the job (set by :meth:`take`)."""

    # -- the upload's side -----------------------------------------------------------------
    def grew(self, size: int) -> None:
        """``size`` bytes of the upload are in the file now."""
        with self._cond:
            self._size = size
            self._moved = time.monotonic()
            self._cond.notify_all()

    def verified(self) -> None:
        """The upload is complete and matches its CID: the revision may be committed."""
        with self._cond:
            if self._state is _State.RECEIVING:
                self._state = _State.VERIFIED
            self._cond.notify_all()

    def done(self, item: object) -> bool:
        """The upload is durable in the queue as ``item``; True if the worker still has the job
        (the handler must not queue it), False if the worker gave way (queue it as usual)."""
        with self._cond:
            self._state = _State.DONE
            self._item = item
            self._cond.notify_all()
            return not self._released

    def aborted(self) -> None:
        """The upload failed (cut off, CID mismatch, refused, spool full): publish nothing."""
        with self._cond:
            if self._state is not _State.DONE:
                self._state = _State.ABORTED
            self._cond.notify_all()

    # -- the worker's side -----------------------------------------------------------------
    def take(self, repository: str) -> bool:
        """A worker of ``repository`` starts the job; True if the upload is complete already."""
        with self._cond:
            self.repository = repository
            return self._state is _State.DONE

    @property
    def was_aborted(self) -> bool:
        """True once the upload failed."""
        with self._cond:
            return self._state is _State.ABORTED

    def reader(self, give_way: Callable[[], bool]) -> LiveReader:
        """A stream of the upload's bytes that waits for more while the upload goes on."""
        return LiveReader(self, give_way)

    def _wait(self, until: Callable[[], bool], give_way: Callable[[], bool] | None) -> None:
        """Wait (holding the condition) until ``until()``; give way if asked while receiving.

        An upload that stopped moving for ``STALL_SECONDS`` is given back: with ``give_way``
        GaveWayError is raised, without it the wait just ends (``until()`` still false).
        """
        while not until():
            if self._state is _State.RECEIVING:
                stalled = time.monotonic() - self._moved > STALL_SECONDS
                if stalled or (give_way is not None and give_way()):
                    self._released = True
                    if give_way is None:
                        return
                    raise GaveWayError("the upload is still arriving and others wait: queued instead")
            self._cond.wait(POLL_SECONDS)

    def wait_verified(self, give_way: Callable[[], bool]) -> None:
        """Return once the upload is complete and matches its CID; InputError if it failed."""
        with self._cond:
            self._wait(lambda: self._state is not _State.RECEIVING, give_way)
            if self._state is _State.ABORTED:
                raise InputError("the upload failed (cut off, or its content does not match the cid)")

    def wait_done(self) -> Any:
        """Wait for the handler to finish with the upload; its queue item, or None if it failed.

        Not after :class:`GaveWayError`: the upload is then the handler's again.
        """
        with self._cond:
            self._wait(lambda: self._state in (_State.DONE, _State.ABORTED), None)
            return self._item if self._state is _State.DONE else None

    def open(self) -> int:
        """A file descriptor of the upload's file: the incoming one, or where it went if the
        upload completed before the worker came (read-only; stays valid after the rename)."""
        flags = os.O_RDONLY | os.O_CLOEXEC
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            pass
        with self._cond:  # moved (or deleted): wait for the handler to say which
            self._wait(lambda: self._state in (_State.DONE, _State.ABORTED), None)
            if self._state is not _State.DONE:
                raise InputError("the upload was interrupted or refused")
            return os.open(self._item.path, flags)

    def _read_limit(self, pos: int, give_way: Callable[[], bool]) -> int:
        """Bytes of the file readable from ``pos`` on (0 at the end of a complete upload)."""
        with self._cond:
            self._wait(lambda: self._size > pos or self._state is not _State.RECEIVING, give_way)
            if self._state is _State.ABORTED:
                raise InputError("the upload was interrupted or refused")
            return self._size - pos


class LiveReader(io.RawIOBase):
    """The upload's spool file read as it grows; EOF once the upload is complete and read."""

    def __init__(self, feed: LiveFeed, give_way: Callable[[], bool]) -> None:
        self.feed = feed
        self.give_way = give_way
        self.pos = 0
        self._fd = feed.open()

    def readable(self) -> bool:
        """True: this is a readable stream."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read what has arrived (waiting for some if none has)."""
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.feed._read_limit(self.pos, self.give_way))
        if n <= 0:
            return 0
        got = os.readv(self._fd, [view[:n]])
        self.pos += got
        return got

    def close(self) -> None:
        """Close the file (the upload goes on)."""
        if not self.closed:
            os.close(self._fd)
        super().close()
