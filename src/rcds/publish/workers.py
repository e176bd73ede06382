"""Worker processes that compress, hash and store batches of small objects outside the GIL.

A batch is many small contents sent as one buffer through a pipe, or, for a plain tar on disk,
their byte ranges in that file (the worker reads them itself: no data crosses the pipe); the
worker compresses each, hashes the result, writes the objects into the store itself (it opens the
:class:`~rcds.storage.local.LocalStore` by path) and answers with the digests. The ingest's
process only parses the input and fills the catalog, so both cores compress.

Workers are fresh interpreters (:class:`rcds.workerproc.WorkerProcess`: fork+exec, never a plain
``fork`` of the multithreaded service). They start on first use and are shared by the ingests of
a process (one at a time; a second concurrent ingest falls back to threads). A worker exits when
its request pipe reaches end of file, so killing the parent never leaves workers behind; the pool
is shut down at interpreter exit. Each worker's bytes in flight are capped by its pipe's capacity
(1 MiB), so the parent never blocks on a send and memory stays bounded.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import deque
from multiprocessing.connection import wait

from rcds import errors
from rcds.errors import RcdsError, StorageError
from rcds.format.hashes import ContentHash
from rcds.publish.objworker import Batch
from rcds.workerproc import WorkerProcess, configured_count

ENV_PROCESSES = "RCDS_INGEST_PROCESSES"
"""Environment variable: number of worker processes (``0`` disables them; default: CPU count)."""
PIPE_BYTES = 1 << 20
"""Requested capacity of each request pipe: a worker's bytes in flight."""
QUEUE_BYTES = 3 << 20
"""Content bytes a worker may have queued: several range batches (whose requests take little
pipe space) keep it busy between its answers, and the ingest waits for it beyond that."""
START_SECONDS = 30.0
"""How long a new worker may take to start before the ingest goes on without processes."""
RETRY_SECONDS = 600.0
"""After workers failed to start, how long ingests use threads before trying again."""
WORKER_MODULE = "rcds.publish.objworker"
"""The module whose ``serve`` a worker runs."""


class _Worker:
    def __init__(self) -> None:
        self.proc = WorkerProcess(WORKER_MODULE, PIPE_BYTES)
        self.process = self.proc.process
        self.requests = self.proc.requests
        self.replies = self.proc.replies
        self.capacity = self.proc.capacity
        self.queue: deque[Batch] = deque()
        self.in_flight = 0
        self.queued = 0

    def room(self, batch: Batch) -> bool:
        # unread requests never exceed the pipe's capacity (less a page for framing): no blocking send
        pipe_ok = self.in_flight + batch.cost <= self.capacity - 4096
        return pipe_ok and self.queued + batch.nbytes <= QUEUE_BYTES

    def send(self, batch: Batch) -> None:
        head, blob = batch.message()
        self.requests.send(head)
        if blob is not None:
            self.requests.send_bytes(blob)
        batch.items = []
        self.queue.append(batch)
        self.in_flight += batch.cost
        self.queued += batch.nbytes

    def receive(self) -> None:
        try:
            reply = self.replies.recv()
        except (EOFError, OSError):
            raise self.died() from None
        batch = self.queue.popleft()
        self.in_flight -= batch.cost
        self.queued -= batch.nbytes
        if reply[0] != "ok":
            raise _ERRORS.get(reply[1], StorageError)(reply[2])
        digests, batch.written, batch.bytes_written = reply[1], reply[2], reply[3]
        batch.hashes = [ContentHash(batch.algorithm, digests[i : i + 20]) for i in range(0, len(digests), 20)]

    def died(self) -> StorageError:
        """The error for a worker that is gone (killed, crashed, out of memory)."""
        code = self.proc.exit_code()
        return StorageError(
            f"an object-writing worker process (pid {self.proc.pid}) died"
            f" (exit code {code}); nothing was published: run the ingest again,"
            f" or set {ENV_PROCESSES}=0 to compress in the ingest's own process"
        )

    def stop(self, timeout: float) -> None:
        self.proc.stop(timeout)


_ERRORS: dict[str, type[RcdsError]] = {
    c.__name__: c for c in (errors.ConfigError, errors.InputError, errors.IntegrityError, StorageError)
}
"""Errors a worker reports, by class name (anything else becomes a StorageError)."""


class WorkerPool:
    """A few worker processes and the batches each has in flight."""

    def __init__(self, processes: int) -> None:
        self.pid = os.getpid()
        self.broken = False
        self.workers: list[_Worker] = []
        try:
            for _ in range(processes):
                self.workers.append(_Worker())
            for w in self.workers:  # each says "ready" once its imports are done (~0.1 s, in parallel)
                if not w.replies.poll(START_SECONDS) or w.replies.recv()[0] != "ready":
                    raise RuntimeError(f"a worker process did not start within {START_SECONDS} s")
        except BaseException:
            self.close()
            raise

    @property
    def max_batch(self) -> int:
        """The largest batch of contents (bytes) that fits a worker's pipe."""
        return min(w.capacity for w in self.workers) // 2

    @property
    def max_range_batch(self) -> int:
        """The largest batch of byte ranges (content bytes): a third of a worker's queue."""
        return QUEUE_BYTES // 3

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (for diagnostics)."""
        return [w.process.pid for w in self.workers]

    def submit(self, batch: Batch) -> None:
        """Send a batch to the least loaded worker, first collecting replies until one has room."""
        while True:
            worker = min(self.workers, key=lambda w: w.queued)
            if worker.room(batch) or not worker.queue:
                break
            self.collect(block=True)
        try:
            worker.send(batch)
        except OSError:
            self.broken = True
            raise worker.died() from None

    def collect(self, block: bool = False, timeout: float | None = None) -> None:
        """Read the replies that have arrived; with ``block``, wait for at least one."""
        busy = [w for w in self.workers if w.queue]
        if not busy:
            return
        ready = wait([w.replies for w in busy], timeout if block else 0)
        if block and not ready:
            self.broken = True
            raise StorageError(f"worker processes gave no answer for {timeout} s; run the ingest again")
        for w in busy:
            if w.replies in ready:
                self._receive(w)

    def _receive(self, worker: _Worker) -> None:
        try:
            worker.receive()
        except StorageError:
            self.broken = True
            raise

    def finish(self, batch: Batch) -> None:
        """Wait until ``batch`` has its hashes."""
        while batch.hashes is None:
            self.collect(block=True)

    def idle(self) -> bool:
        """True if no batch is in flight."""
        return not any(w.queue for w in self.workers)

    def settle(self, timeout: float = 120.0) -> None:
        """Wait for every batch in flight (results of an abandoned ingest are dropped)."""
        while not self.broken and not self.idle():
            self.collect(block=True, timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers: they see end of file and exit; stragglers are killed."""
        for w in self.workers:
            w.stop(timeout)
        self.workers = []


_lock = threading.Lock()
_shared: WorkerPool | None = None
_leased = False
_disabled_until = 0.0
disabled_reason: str | None = None
"""Why worker processes could not start last time (None if they could)."""


def configured_processes() -> int:
    """Worker processes to use: ``RCDS_INGEST_PROCESSES`` or the CPU count (0: none)."""
    return configured_count(ENV_PROCESSES)


def pids() -> list[int]:
    """Process ids of the shared pool's workers (empty if none run): for diagnostics and benches."""
    pool = _shared
    return pool.pids if pool is not None and pool.pid == os.getpid() else []


def running() -> bool:
    """True if the shared pool is up (a lease then costs no start-up)."""
    return _shared is not None and _shared.workers != [] and _shared.pid == os.getpid()


def lease() -> WorkerPool | None:
    """The shared pool for one ingest (started if needed), or None: busy, disabled or cannot start."""
    global _shared, _leased, _disabled_until, disabled_reason
    n = configured_processes()
    if n == 0:
        return None
    with _lock:
        if _leased or time.monotonic() < _disabled_until:
            return None
        if _shared is not None and (_shared.broken or _shared.pid != os.getpid() or not _shared.workers):
            if _shared.pid == os.getpid():
                _shared.close()
            _shared = None
        if _shared is None:
            try:
                _shared = WorkerPool(n)
            except (OSError, RuntimeError, ValueError, EOFError) as exc:  # e.g. no fork allowed: threads
                disabled_reason = f"{type(exc).__name__}: {exc}"
                _disabled_until = time.monotonic() + RETRY_SECONDS
                return None
            disabled_reason = None
        _leased = True
        return _shared


def release(pool: WorkerPool) -> None:
    """Give the pool back after an ingest; a broken pool is stopped (a new one starts next time)."""
    global _shared, _leased
    with _lock:
        try:
            pool.settle()
        except RcdsError:
            pool.broken = True
        if pool.broken:
            pool.close()
            if _shared is pool:
                _shared = None
        _leased = False


def shutdown() -> None:
    """Stop the shared pool (also runs at interpreter exit)."""
    global _shared
    with _lock:
        if _shared is not None and _shared.pid == os.getpid():
            _shared.close()
        _shared = None


atexit.register(shutdown)
