"""Worker processes for ``rcds get``: download, verify, inflate and write outside the caller's GIL.

Per object, the batch path of ``rcds get`` holds the GIL for tens of microseconds (HTTP heads,
hashing set-up, temp files), and its threads hand the GIL back and forth at every system call.
With thousands of small files that, not the network, bounds the copy. So a large copy is split
into batches of objects (:class:`~rcds.client.get.worker.Job`) that a few worker processes
(:class:`rcds.workerproc.WorkerProcess`, running :mod:`rcds.client.get.worker`) take in turn:
each downloads its batch pipelined through its own fetcher, verifies every object and writes
every file, then reports the batch done. The caller records the progress and the resume
state, and writes what is not a single-object file itself.

Workers are used for at least :data:`rcds.client.get.downloads.MIN_OBJECTS` objects (the
start-up costs ~0.1 s of CPU each); ``RCDS_GET_PROCESSES`` sets their number (``0``: none,
everything in-process; default: the CPU count, at most :data:`MAX_DEFAULT`). An error in a
worker stops the others (SIGTERM: each finishes the file it is writing, if any, and writes no
other) and reaches the caller as the same error class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Protocol

from rcds import errors
from rcds.client.get.worker import Job, Setup, WireJob
from rcds.errors import RcdsError, StorageError
from rcds.workerproc import WorkerProcess, configured_count

__all__ = ["ENV_PROCESSES", "GetProcesses", "configured_processes", "worker_error"]

ENV_PROCESSES = "RCDS_GET_PROCESSES"
"""Environment variable: worker processes of ``rcds get`` (``0``: none)."""
MAX_DEFAULT = 4
"""At most this many workers unless ``RCDS_GET_PROCESSES`` says otherwise."""
BATCH_OBJECTS = 1024
BATCH_BYTES = 32 << 20
"""A batch holds at most this many objects / plain bytes (a pipelined download each)."""
MIN_BATCH = 64
IN_FLIGHT = 2
"""Batches sent to a worker ahead of its answers."""
STREAM_BATCH = 256
"""While jobs are still being found (:meth:`GetProcesses.feed`), batches hold at least this many."""
STOP_SECONDS = 10.0

_ERRORS: dict[str, type[RcdsError]] = {
    c.__name__: c
    for c in (
        errors.ConfigError,
        errors.InputError,
        errors.IntegrityError,
        errors.NotFoundError,
        errors.StorageError,
        errors.NetworkError,
    )
}
_ERRORS["FetchError"] = errors.NetworkError


def worker_error(kind: str, message: str) -> RcdsError:
    """The error a worker process reported (its class name ``kind`` and ``message``) as this
    process raises it: the same class where known, else a :class:`StorageError` saying how to resume."""
    if kind in _ERRORS:
        return _ERRORS[kind](message)
    return StorageError(f"a download worker process failed: {message}; run rcds get again to resume")


def _ignore(part: range) -> None:
    pass


def configured_processes() -> int:
    """Worker processes to use: ``RCDS_GET_PROCESSES``, else the CPU count (at most 4)."""
    return configured_count(ENV_PROCESSES, MAX_DEFAULT)


class Sized(Protocol):
    """What batching needs of a job: its plain size (a :class:`Job` or a ``Wanted`` has it)."""

    @property
    def size(self) -> int:
        """Plain bytes."""
        ...


def cut(items: Sequence[Sized], start: int, count: int, max_bytes: int = BATCH_BYTES) -> range:
    """``items[start:]``'s first ``count`` indices, fewer if their sizes pass ``max_bytes`` (one at least)."""
    end, size = start + 1, items[start].size
    stop = min(len(items), start + count)
    while end < stop and size + items[end].size <= max_bytes:
        size += items[end].size
        end += 1
    return range(start, end)


def batches(
    jobs: Sequence[Sized],
    workers: int,
    max_objects: int = BATCH_OBJECTS,
    max_bytes: int = BATCH_BYTES,
    start: int = 0,
) -> Iterator[range]:
    """Consecutive index ranges of ``jobs[start:]``: large first, smaller towards the end.

    Each is a share of what is left (guided scheduling: the workers finish close together),
    at least :data:`MIN_BATCH` objects and at most ``max_objects`` / ``max_bytes``.
    """
    while start < len(jobs):
        count = min(max_objects, max(MIN_BATCH, (len(jobs) - start) // (2 * workers)))
        part = cut(jobs, start, count, max_bytes)
        yield part
        start = part.stop


class GetProcesses:
    """A few started workers that take batches of jobs. Use as a context manager.

    Either :meth:`run` with the whole list, or, so that batches go out while the caller is
    still finding the jobs: :meth:`start`, :meth:`feed` now and then as the list grows, and
    :meth:`finish` once it is complete.
    """

    module = "rcds.client.get.worker"
    """The module whose ``serve`` the workers run."""

    def __init__(self, count: int) -> None:
        self.workers: list[WorkerProcess] = []
        self.stats: dict[str, int] = {}
        self._sent: dict[int, deque[range]] = {}
        self._done: Callable[[range], None] = _ignore
        self._number = 0
        try:
            for _ in range(max(1, count)):
                self.workers.append(WorkerProcess(self.module))
        except BaseException:
            self.close(kill=True)
            raise

    def run(self, setup: Setup, jobs: Sequence[Job], done: Callable[[range], None]) -> None:
        """Have the workers fetch and write ``jobs``; ``done(indices)`` after each batch is in place.

        Raises the first worker error (the others are stopped); the workers are finished
        afterwards either way.
        """
        try:
            self.start(setup, done)
        except BaseException:
            self.close(kill=True)
            raise
        self.finish(jobs, 0, lambda part: [jobs[i] for i in part])

    def feed(self, items: Sequence[Sized], start: int, make: Callable[[range], Sequence[WireJob]]) -> int:
        """Without waiting: take the answers that are in, and send ``items[start:]`` on in full batches.

        Sends batches of :data:`STREAM_BATCH` items or more (at most :data:`BATCH_OBJECTS`)
        while a worker has room; ``make(part)`` gives the jobs of the indices ``part``. Returns
        where the items not sent yet start. Call it now and then while ``items`` grows;
        :meth:`finish` sends the rest.
        """
        self.collect(block=False)
        while self.has_room() and len(items) - start >= STREAM_BATCH:
            part = cut(items, start, BATCH_OBJECTS)
            self.send(part, make(part))
            start = part.stop
        return start

    def finish(self, items: Sequence[Sized], start: int, make: Callable[[range], Sequence[WireJob]]) -> None:
        """Send ``items[start:]`` (the last of them: guided :func:`batches`), wait for every batch, stop.

        Raises the first worker error; the workers are stopped either way.
        """
        try:
            todo = deque(batches(items, len(self.workers), start=start))
            while True:
                while todo and self.has_room():
                    part = todo.popleft()
                    self.send(part, make(part))
                if not self.collect(block=True):
                    break
            self.close()
        except BaseException:
            self.close(kill=True)
            raise

    def start(self, setup: Setup, done: Callable[[range], None]) -> None:
        """Tell every worker how to reach the repository; ``done(part)`` will follow each batch sent."""
        self._done = done
        for w in self.workers:
            self._send(w, setup)
            self._sent[w.pid] = deque()

    def has_room(self) -> bool:
        """True if a worker has fewer than :data:`IN_FLIGHT` batches: :meth:`send` does not queue."""
        return any(len(q) < IN_FLIGHT for q in self._sent.values())

    def send(self, part: range, jobs: Sequence[WireJob]) -> None:
        """Send the batch ``jobs`` (the caller's indices ``part``) to the least busy worker."""
        w = min(self.workers, key=lambda w: len(self._sent[w.pid]))
        self._send(w, (self._number, jobs))
        self._sent[w.pid].append(part)
        self._number += 1

    def collect(self, block: bool) -> bool:
        """Take the answers that are in (with ``block``, wait for one at least); True if batches are out.

        Calls ``done`` for every finished batch; raises a worker's error.
        """
        from multiprocessing.connection import wait  # here: the forked route never needs it (start-up)

        busy = [w for w in self.workers if self._sent[w.pid]]
        if not busy:
            return False
        for conn in wait([w.replies for w in busy], None if block else 0):
            w = next(w for w in busy if w.replies is conn)
            self._answer(w, self._sent[w.pid], self._done)
        return True

    def _send(self, w: WorkerProcess, message: object) -> None:
        try:
            w.requests.send(message)
        except OSError:
            raise self._died(w) from None

    def _answer(self, w: WorkerProcess, queue: deque[range], done: Callable[[range], None]) -> None:
        try:
            reply = w.replies.recv()
        except (EOFError, OSError):
            raise self._died(w) from None
        if reply[0] == "done":
            done(queue.popleft())
        elif reply[0] == "error":
            raise worker_error(reply[1], reply[2])

    def _died(self, w: WorkerProcess) -> StorageError:
        code = w.exit_code()
        return StorageError(
            f"a download worker process (pid {w.pid}) died (exit code {code}); run rcds get again "
            f"to resume, or set {ENV_PROCESSES}=0 to download in one process"
        )

    def close(self, kill: bool = False) -> None:
        """Stop the workers: at end of file they commit their cache inserts, say bye and exit.

        With ``kill`` they are sent SIGTERM first (they remove their temp files). Idempotent.
        """
        workers, self.workers = self.workers, []
        if kill:
            for w in workers:
                w.terminate(STOP_SECONDS)
            return
        for w in workers:
            with suppress(OSError):
                w.requests.close()
        for w in workers:
            with suppress(EOFError, OSError):
                while True:
                    reply = w.replies.recv()
                    if reply[0] == "bye":
                        for k, v in reply[1].items():
                            self.stats[k] = self.stats.get(k, 0) + v
                        break
            w.stop(STOP_SECONDS)

    def __enter__(self) -> GetProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)
