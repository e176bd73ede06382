"""Worker processes of the mount's cold path: downloads outside the daemon's GIL.

A cold read of many files costs the daemon, per object, an HTTP receive, a SHA-1, an inflate
and a cache write, all under the GIL that also serves FUSE requests. :class:`FetchWorkers`
starts a few long-lived worker processes (:class:`rcds.workerproc.WorkerProcess` running
:mod:`rcds.mount.fetchworker`) per mounted repository that do that work and write straight
into the local cache; the daemon only sends batches of object names
(:meth:`FetchWorkers.submit`) and, as the workers report groups of objects done, releases the
readers waiting for them (a callback per group, on one receiving thread). A reader then reads
the cache file as for any cached object.

The workers fetch exactly as the daemon would: the same servers in the daemon's current order,
the same proxies, network settings and verification, the same local (quota: accounted in the
shared cache database by the worker) and alien cache. A worker that dies has its batches
reported failed (readers fetch those objects themselves); with no worker left
:meth:`FetchWorkers.submit` refuses, and the prefetcher works in-process. Workers exit at end of
file on their request pipe: when the daemon stops them, and when the daemon is killed.

``RCDS_MOUNT_PROCESSES`` sets their number per repository; without it, :data:`DEFAULT` (none:
every download in the daemon). Off by default because on the shared 2-core machine of session 9
(load 13-30) the cold read of the real tree took 1.3-2x the wall time with 2 workers than in
the daemon, for 25-40 % less daemon CPU (docs/performance.md, "Mount, cold read: downloads in
worker processes"): the hand-overs on a reader's path cost more there than the GIL they free.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from multiprocessing.connection import Connection, wait

from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted
from rcds.client.get.worker import Setup
from rcds.mount.fetchworker import wire_object
from rcds.workerproc import WorkerProcess, configured_count

log = logging.getLogger("rcds.mount")

ENV_PROCESSES = "RCDS_MOUNT_PROCESSES"
"""Environment variable: download worker processes per mounted repository (``0``: none)."""
DEFAULT = 0
"""Workers per repository unless ``RCDS_MOUNT_PROCESSES`` says otherwise (see the module)."""
STOP_SECONDS = 2.0

Done = Callable[[list[Wanted], bool], None]
"""Called with objects of a batch: True: in the local cache; False: not brought (batch over)."""


def configured_workers() -> int:
    """Worker processes per repository: ``RCDS_MOUNT_PROCESSES`` (unparsable: 0), else
    :data:`DEFAULT`."""
    if os.environ.get(ENV_PROCESSES, "").strip():
        return configured_count(ENV_PROCESSES)
    return DEFAULT


class _Batch:
    __slots__ = ("done", "items", "left", "reported", "worker")

    def __init__(self, items: list[Wanted], done: Done, worker: WorkerProcess) -> None:
        self.items = items
        self.done = done
        self.left = len(items)
        self.reported = bytearray(len(items))
        self.worker = worker

    def rest(self) -> list[Wanted]:
        """The objects not reported yet."""
        return [w for w, r in zip(self.items, self.reported, strict=True) if not r]


class FetchWorkers:
    """Started workers for one repository's source (see the module docstring). Thread safe."""

    def __init__(self, source: CachedSource, count: int) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._send_locks: dict[int, threading.Lock] = {}
        self._load: dict[int, int] = {}
        """Objects outstanding per live worker (by pid)."""
        self._batches: dict[int, _Batch] = {}
        self._number = 0
        self._closed = False
        self.workers: list[WorkerProcess] = []
        self.sent = 0
        """Objects sent to the workers."""
        self.failed = 0
        """Objects the workers reported not brought."""
        setup = Setup.of(source, keep=True)
        try:
            for _ in range(max(1, count)):
                w = WorkerProcess("rcds.mount.fetchworker")
                self.workers.append(w)
                w.requests.send(setup)
                self._send_locks[w.pid] = threading.Lock()
                self._load[w.pid] = 0
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._receive, name="rcds-mount-fetch-replies", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while a worker is left to take batches."""
        return bool(self._load) and not self._closed

    def submit(self, items: Sequence[Wanted], done: Done, urgent: bool = False) -> bool:
        """Have the least busy worker bring ``items`` into the local cache; ``done`` follows for
        every object (see :data:`Done`), on the receiving thread. ``urgent``: a reader waits for
        the first object (its worker takes the batch before those it has queued). False (and no
        call of ``done``) if no worker is left: the caller fetches in-process."""
        items = list(items)
        if not items:
            return True
        message = [wire_object(w.hash, w.kind, w.size, w.compressed) for w in items]
        while True:
            with self._lock:
                if self._closed or not self._load:
                    return False
                pid = min(self._load, key=self._load.__getitem__)
                w = next(w for w in self.workers if w.pid == pid)
                number = self._number
                self._number += 1
                self._batches[number] = _Batch(items, done, w)
                self._load[pid] += len(items)
                self.sent += len(items)
            try:
                with self._send_locks[pid]:
                    w.requests.send((number, urgent, message))
                return True
            except OSError:
                with self._lock:
                    batch = self._batches.pop(number, None)
                    self._load.pop(pid, None)
                    self.sent -= len(items)
                if batch is None:  # reported failed by the receiving thread meanwhile
                    return True

    def _receive(self) -> None:
        """The receiving thread: replies in, ``done`` callbacks out, until no worker is left."""
        while True:
            with self._lock:
                live = [w for w in self.workers if w.pid in self._load]
            if not live:
                return
            conns: dict[Connection, WorkerProcess] = {w.replies: w for w in live}
            try:
                ready = wait(list(conns), 1.0)
            except OSError:
                ready = []
            for conn in ready:
                w = conns[conn]  # type: ignore[index]
                try:
                    reply = w.replies.recv()
                except (EOFError, OSError):
                    self._lost(w)
                    continue
                self._reply(reply)

    def _reply(self, reply: tuple[object, ...]) -> None:
        if reply[0] not in ("done", "failed"):
            return
        number, indices = reply[1], reply[2]
        assert isinstance(number, int) and isinstance(indices, list)
        ok = reply[0] == "done"
        with self._lock:
            batch = self._batches.get(number)
            if batch is None:
                return
            batch.left -= len(indices)
            reported = batch.reported
            for i in indices:
                reported[i] = 1
            if batch.left <= 0:
                del self._batches[number]
            if batch.worker.pid in self._load:
                self._load[batch.worker.pid] -= len(indices)
            if not ok:
                self.failed += len(indices)
        if ok:
            evictions = reply[3]
            if isinstance(evictions, int) and evictions:
                self.source.cache.evictions += evictions
        else:
            log.info("download worker: %d objects not brought (reads fetch them): %s", len(indices), reply[3])
        batch.done([batch.items[i] for i in indices], ok)

    def _lost(self, w: WorkerProcess) -> None:
        """A worker's reply pipe ended: its outstanding objects are reported not brought."""
        with self._lock:
            self._load.pop(w.pid, None)
            lost = [(n, b) for n, b in self._batches.items() if b.worker is w]
            for n, _ in lost:
                del self._batches[n]
            closed = self._closed
        if not closed:
            log.warning(
                "download worker process %d ended (exit code %s); its %d batches are fetched by the daemon",
                w.pid,
                w.exit_code(0.1),
                len(lost),
            )
        for _, b in lost:
            b.done(b.rest(), False)

    def close(self) -> None:
        """Stop the workers (end of file on their request pipes; killed after a short wait);
        every outstanding object is reported not brought. Idempotent."""
        with self._lock:
            self._closed = True
            workers = list(self.workers)
        for w in workers:
            with suppress(OSError):
                w.requests.close()
        for w in workers:
            w.stop(STOP_SECONDS)
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(STOP_SECONDS)
        with self._lock:
            lost = list(self._batches.values())
            self._batches.clear()
            self._load.clear()
        for b in lost:
            b.done(b.rest(), False)
