"""Worker processes that compress, hash and store batches of small objects outside the GIL.

A batch is many small contents sent as one buffer through a pipe, or, for a plain tar on disk,
their byte ranges in that file (the worker reads them itself: no data crosses the pipe); the
worker compresses each, hashes the result, writes the objects into the store itself (it opens the
:class:`~rcds.storage.local.LocalStore` by path) and answers with the digests. The ingest's
process only parses the input and fills the catalog, so both cores compress.

Workers are fresh interpreters (:class:`rcds.workerproc.WorkerProcess`: fork+exec, never a plain
``fork`` of the multithreaded service). They start on first use, or (:func:`prestart`) as an
ingest of a large tar file begins, and are shared by the ingests of a process (one at a time; a
second concurrent ingest falls back to threads). They can run at a lower CPU priority than
the ingest (``RCDS_INGEST_WORKER_NICE``), whose serial main thread feeds them. A worker exits when
its request pipe reaches end of file, so killing the parent never leaves workers behind; the pool
is shut down at interpreter exit. Each worker's bytes in flight are capped by its pipe's capacity
(1 MiB), so the parent never blocks on a send and memory stays bounded.
"""

from __future__ import annotations

import atexit
import contextlib
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
ENV_NICE = "RCDS_INGEST_WORKER_NICE"
"""Environment variable: how much lower the workers' CPU priority is than the ingest's (``0``:
the same; default ``NICE``)."""
NICE = 0
"""The workers' default nice increment: none. The ingest's main thread (tar headers, catalog
rows) is serial and feeds both workers; with a positive increment (e.g. 3: CFS weight 526 against
1024) it gets a core before its workers do, which helped the command-line ingest at isal:2 under
load (session 10), but in the service's live publish of 100 MB end -> PRESENT went from 1.84 s
(nice 0) to 2.06 s (nice 3) on a quiet machine, past its 2 s aim: so it is opt-in
(``RCDS_INGEST_WORKER_NICE``)."""


def configured_nice() -> int:
    """The workers' nice increment: ``RCDS_INGEST_WORKER_NICE`` (0-19) or ``NICE``."""
    raw = os.environ.get(ENV_NICE, "").strip()
    try:
        return min(19, max(0, int(raw))) if raw else NICE
    except ValueError:
        return NICE


class _Worker:
    def __init__(self) -> None:
        self.proc = WorkerProcess(WORKER_MODULE, PIPE_BYTES)
        self.process = self.proc.process
        nice = configured_nice()
        if nice:
            # raising a child's nice value needs no privilege; where it fails: same priority
            with contextlib.suppress(OSError):
                lower = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, lower)
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

    def __init__(self, processes: int, *, wait: bool = True) -> None:
        """Start ``processes`` workers; with ``wait``, return once all are ready (else see
        :meth:`ready` and :meth:`wait_ready`)."""
        self.pid = os.getpid()
        self.broken = False
        self.workers: list[_Worker] = []
        self._starting: list[_Worker] = []
        self._start_lock = threading.Lock()  # ready() may be asked by several ingests' threads
        self._started_at = time.monotonic()
        try:
            for _ in range(processes):
                self.workers.append(_Worker())
        except BaseException:
            self.close()
            raise
        self._starting = list(self.workers)
        if wait:
            self.wait_ready()

    def ready(self) -> bool:
        """True once every worker has said it is ready (never blocks)."""
        with self._start_lock:
            while self._starting and self._starting[0].replies.poll(0):
                self._take_ready(self._starting.pop(0))
            return not self._starting

    def wait_ready(self) -> None:
        """Wait until every worker is ready (each says so once its imports are done, ~0.1 s, in
        parallel); a worker that does not within ``START_SECONDS`` of the start stops the pool."""
        with self._start_lock:
            try:
                while self._starting:
                    w = self._starting[0]
                    left = max(0.0, self._started_at + START_SECONDS - time.monotonic())
                    if not w.replies.poll(left):
                        raise RuntimeError(f"a worker process did not start within {START_SECONDS} s")
                    self._take_ready(self._starting.pop(0))
            except BaseException:
                self.close()
                raise

    def _take_ready(self, w: _Worker) -> None:
        try:
            ok = w.replies.recv()[0] == "ready"
        except (EOFError, OSError):
            ok = False
        if not ok:
            self.close()
            raise RuntimeError(f"a worker process (pid {w.proc.pid}) failed to start")

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
        self._starting = []


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
    """True if the shared pool is up and ready (a lease then costs no start-up)."""
    pool = _shared
    if pool is None or not pool.workers or pool.pid != os.getpid():
        return False
    try:
        return pool.ready()
    except RuntimeError:
        return False  # failed to start: the next lease sees a pool without workers


def prestart() -> None:
    """Start the shared pool's workers now without waiting for them (an ingest that will need
    them calls this first: they start while it reads its first members). Does nothing if the
    pool is running, leased, disabled or cannot start (a later :func:`lease` reports that)."""
    global _shared
    n = configured_processes()
    if n == 0:
        return
    with _lock:
        if _leased or _shared is not None or time.monotonic() < _disabled_until:
            return
        try:
            _shared = WorkerPool(n, wait=False)
        except (OSError, RuntimeError, ValueError):
            return


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
        try:
            if _shared is None:
                _shared = WorkerPool(n)
            else:
                _shared.wait_ready()  # started by prestart(): usually ready by now
        except (OSError, RuntimeError, ValueError, EOFError) as exc:  # e.g. no fork allowed: threads
            _shared = None
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
