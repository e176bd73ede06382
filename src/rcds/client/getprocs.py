"""Worker processes for ``rcds get``: download, verify, inflate and write outside the caller's GIL.

Per object, the batch path of ``rcds get`` holds the GIL for tens of microseconds (HTTP heads,
hashing set-up, temp files), and its threads hand the GIL back and forth at every system call.
With thousands of small files that, not the network, bounds the copy. So a large copy is split
into batches of objects (:class:`~rcds.client.getworker.Job`) that a few worker processes
(:class:`rcds.workerproc.WorkerProcess`, running :mod:`rcds.client.getworker`) take in turn:
each downloads its batch pipelined through its own fetcher, verifies every object and writes
every file (temp file + rename), then reports the batch done. The caller records the progress
and the resume state, and writes what is not a single-object file itself.

Workers are used for at least :data:`MIN_OBJECTS` objects (the start-up costs ~0.1 s of CPU
each); ``RCDS_GET_PROCESSES`` sets their number (``0``: none, everything in-process; default:
the CPU count, at most :data:`MAX_DEFAULT`). An error in a worker stops the others (SIGTERM:
they remove their temp files) and reaches the caller as the same error class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from multiprocessing.connection import wait

from rcds import errors
from rcds.client.getworker import Job, Setup
from rcds.errors import RcdsError, StorageError
from rcds.workerproc import WorkerProcess, configured_count

__all__ = ["ENV_PROCESSES", "MIN_OBJECTS", "GetProcesses", "configured_processes"]

ENV_PROCESSES = "RCDS_GET_PROCESSES"
"""Environment variable: worker processes of ``rcds get`` (``0``: none)."""
MIN_OBJECTS = 1000
"""Fewer objects to download than this: no worker processes."""
MAX_DEFAULT = 4
"""At most this many workers unless ``RCDS_GET_PROCESSES`` says otherwise."""
BATCH_OBJECTS = 1024
BATCH_BYTES = 32 << 20
"""A batch holds at most this many objects / plain bytes (a pipelined download each)."""
MIN_BATCH = 64
IN_FLIGHT = 2
"""Batches sent to a worker ahead of its answers."""
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


def configured_processes() -> int:
    """Worker processes to use: ``RCDS_GET_PROCESSES``, else the CPU count (at most 4)."""
    return configured_count(ENV_PROCESSES, MAX_DEFAULT)


def batches(
    jobs: Sequence[Job], workers: int, max_objects: int = BATCH_OBJECTS, max_bytes: int = BATCH_BYTES
) -> Iterator[range]:
    """Consecutive index ranges of ``jobs``: large first, smaller towards the end.

    Each is a share of what is left (guided scheduling: the workers finish close together),
    at least :data:`MIN_BATCH` objects and at most ``max_objects`` / ``max_bytes``.
    """
    start = 0
    while start < len(jobs):
        count = min(max_objects, max(MIN_BATCH, (len(jobs) - start) // (2 * workers)))
        end, size = start + 1, jobs[start].size
        while end < len(jobs) and end - start < count and size + jobs[end].size <= max_bytes:
            size += jobs[end].size
            end += 1
        yield range(start, end)
        start = end


class GetProcesses:
    """A few started workers; :meth:`run` gives them the jobs. Use as a context manager."""

    module = "rcds.client.getworker"
    """The module whose ``serve`` the workers run."""

    def __init__(self, count: int) -> None:
        self.workers: list[WorkerProcess] = []
        self.stats: dict[str, int] = {}
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
        todo = deque(batches(jobs, len(self.workers)))
        sent: dict[int, deque[range]] = {}
        number = 0
        try:
            for w in self.workers:
                self._send(w, setup)
                sent[w.pid] = deque()
            live = list(self.workers)
            while True:
                for w in live:
                    queue = sent[w.pid]
                    while todo and len(queue) < IN_FLIGHT:
                        part = todo.popleft()
                        self._send(w, (number, [jobs[i] for i in part]))
                        queue.append(part)
                        number += 1
                busy = [w for w in live if sent[w.pid]]
                if not busy:
                    break
                for conn in wait([w.replies for w in busy]):
                    w = next(w for w in busy if w.replies is conn)
                    self._answer(w, sent[w.pid], done)
            self.close()
        except BaseException:
            self.close(kill=True)
            raise

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
            kind, message = reply[1], reply[2]
            if kind in _ERRORS:
                raise _ERRORS[kind](message)
            raise StorageError(f"a download worker process failed: {message}; run rcds get again to resume")

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
