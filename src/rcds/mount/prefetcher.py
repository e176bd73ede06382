"""Downloads ahead of reads for one mounted repository: a queue of objects and a few lanes.

A cold read in a directory makes :class:`~rcds.mount.repomount.RepoMount` queue the objects of
the directory's other small files (:meth:`Prefetcher.want`), and a read of a chunk of a large
file queues the next chunks. :data:`LANES` long-lived threads take the queue in order, many
objects at a time, and download each group in one pipelined exchange
(:func:`rcds.client.fetch.bulk.fetch_objects`: verified, then handed to the local cache's
background inserter), so directories asked for by several readers at once share batches, and no
thread is started per directory.

A read that needs an object first asks :meth:`Prefetcher.wait`: an object still in the queue
is taken off it together with the queued objects planned right after it (a *run*: the files a
reader going in name order reads next, at most :data:`RUN_OBJECTS` / :data:`RUN_BYTES`), and
the reader fetches the run at once in one pipelined exchange, its own object first, rather than
queue behind others or fetch one object per round trip. An object a lane (or another reader's
run) is downloading is waited for, until it arrives (each awaited object has its own lock,
released when the object is in the cache, not when the whole batch is) or :data:`WAIT` seconds
pass. Nothing here ever fails a read: a lane that cannot download (server gone, bad data)
logs it and releases the readers waiting for its objects, which then fetch through the usual
path (fail-over, timeouts, ``EIO``).

Waking waiting readers is done a group of objects at a time (:data:`WAKE_EVERY`), under one
acquisition of the queue's lock, and a thread that waits is made ``SCHED_BATCH`` (once): woken,
it does not preempt the thread that woke it, which holds the GIL (waking readers object by
object cost the lanes a third of their time under the GIL).

Bounded: at most :data:`MAX_QUEUED_BYTES` of plain bytes wait in the queue (more is not
queued), and what is queued is decided by the callers' own bounds (a directory's small files,
a few chunks ahead).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor

from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted, fetch_objects
from rcds.errors import RcdsError
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.mount.fetchprocs import FetchWorkers
from rcds.net.failures import FetchError

log = logging.getLogger("rcds.mount")

LANES = 2
"""Download threads per repository (each one pipelined exchange at a time)."""
BATCH_OBJECTS = 128
BATCH_BYTES = 16 << 20
"""A lane takes at most this many objects / plain bytes off the queue at a time."""
RUN_OBJECTS = 16
RUN_BYTES = 2 << 20
"""A reader that finds its object queued takes at most this many objects / plain bytes with it."""
MAX_QUEUED_BYTES = 64 << 20
"""Plain bytes waiting in the queue at most; objects beyond are not queued."""
RUN_PATIENCE = 0.05
"""Seconds from its start a reader receives its run itself (its next reads then find their
objects cached); what comes later, once its own object is in, is left to a finishing thread."""
FINISHERS = 2
"""Threads receiving the rest of readers' runs (see :data:`RUN_PATIENCE`)."""
WAIT = 2.0
"""Seconds a read waits at most for an object being downloaded, then fetches it itself."""
WAKE_EVERY = 8
WAKE_DELAY = 0.002
"""Objects done are released (waiting readers woken) this many at a time, or when the first
of them has been done this many seconds (checked as the next one arrives), and at a batch's end."""

WORKER_BATCH_OBJECTS = 32
WORKER_BATCH_BYTES = 4 << 20
"""With worker processes, a lane's batch: small, so that a reader's urgent run or object,
which its worker takes next, waits behind little."""
WORKER_WAIT = 30.0
"""With worker processes, seconds a read waits at most for the object it sent to a worker, first
of its batch (a worker reports every object, done or not, within its network timeouts). A read
waiting for an object another sent waits :data:`WAIT` seconds, then fetches it itself (a slow
server answering one request after the other must not keep it waiting for the whole batch)."""
TROUBLE_SECONDS = 5.0
"""After a worker could not bring objects (servers failing), downloads run in the daemon for
this long: reads then fail over and time out once, as without workers, not twice."""

DEMAND_SIZE = 65536
"""Tags counted in :attr:`Prefetcher.demand` at most (forgotten all at once when full)."""

Key = tuple[ContentHash, ObjectKind]


_thread_state = threading.local()
BATCH_WAITERS = os.environ.get("RCDS_MOUNT_SCHED_BATCH", "1") != "0"


def no_wakeup_preemption() -> None:
    """Make the calling thread ``SCHED_BATCH`` (once): when woken it does not preempt the thread
    that woke it, which holds the GIL (else the waker is descheduled with the GIL held, and on a
    busy machine every thread of the daemon waits for it to be scheduled again)."""
    if not BATCH_WAITERS or getattr(_thread_state, "batch", False):
        return
    _thread_state.batch = True
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


Objects = Generator[tuple[int, bytes | bytearray], None, None]


class _Received:
    """An exchange in progress: the objects asked for, which came, and the answers to come."""

    __slots__ = ("fetched", "objects", "todo")

    def __init__(
        self, todo: list[Wanted], objects: Generator[tuple[int, bytes | bytearray], None, None]
    ) -> None:
        self.todo = todo
        self.fetched = [False] * len(todo)
        self.objects = objects


class _Queued:
    """A queued object and where it is in its plan (the order its neighbours were asked for)."""

    __slots__ = ("index", "plan", "wanted")

    def __init__(self, wanted: Wanted, plan: list[Key], index: int) -> None:
        self.wanted = wanted
        self.plan = plan
        self.index = index


class Prefetcher:
    """The download queue of one repository and its lanes (see the module docstring). Thread safe."""

    def __init__(self, source: CachedSource, lanes: int = LANES, workers: FetchWorkers | None = None) -> None:
        self.source = source
        self.workers = workers
        """Worker processes that do the downloads (None: all in this process)."""
        self.lanes = lanes if workers is None or not lanes else 2 * len(workers.workers)
        self._trouble_until = 0.0
        self._cv = threading.Condition()
        self._queued: OrderedDict[Key, _Queued] = OrderedDict()
        self._queued_bytes = 0
        self._pending: dict[Key, threading.Lock | None] = {}
        """Objects queued or being downloaded, with a lock (held while the object is not done)
        made when a reader first waits for it: most objects are never waited for."""
        self._threads: list[threading.Thread] = []
        self._finisher: ThreadPoolExecutor | None = None
        self._closed = False
        self.fetched = 0
        """Objects the lanes and readers' runs brought into the cache."""
        self.failed = 0
        """Objects a lane or run could not bring (its batch failed); readers fetch them themselves."""
        self.refused = 0
        """Objects not queued because the queue was full."""
        self.taken = 0
        """Objects a reader took off the queue to fetch itself (:meth:`wait`), runs included."""
        self.runs = 0
        """Runs readers took off the queue (each one pipelined exchange)."""
        self.waited = 0
        """Waits of readers for an object being downloaded."""
        self.singles = 0
        """Objects a read sent to a worker alone (neither queued nor in flight)."""
        self._tags: dict[Key, str] = {}
        self._scan_at: dict[str, int] = {}
        self._on_scan: Callable[[str], None] | None = None
        self._scan_alone = 0
        self._scan_share = 0.0
        self.demand: dict[str, int] = {}
        """Per tag given to :meth:`want` (a planned directory): reads that came for its
        objects while they were queued or being downloaded (see :mod:`rcds.mount.bulkahead`)."""

    def watch_scans(self, on_scan: Callable[[str], None], alone: int, share: float) -> None:
        """Call ``on_scan(tag)`` (on the reading thread, outside the lock) once the reads of a
        tag's objects while queued or being downloaded (:attr:`demand`) reach ``alone`` and
        ``share`` of the objects queued under it: a directory read whole by many readers."""
        self._on_scan, self._scan_alone, self._scan_share = on_scan, alone, share

    def want(self, items: Iterable[Wanted], tag: str | None = None) -> int:
        """Queue objects for download, in this order (not those queued or in flight already);
        how many were queued. ``tag``: reads of these objects before they are in the cache are
        counted in :attr:`demand` under it."""
        n = 0
        plan: list[Key] = []
        with self._cv:
            if self._closed:
                return 0
            if tag is not None:
                if len(self.demand) >= DEMAND_SIZE:
                    self.demand.clear()
                    self._scan_at.clear()
                self.demand[tag] = 0
            for w in items:
                key = (w.hash, w.kind)
                if key in self._pending or w.size <= 0:
                    continue
                if self._queued_bytes + w.size > MAX_QUEUED_BYTES:
                    self.refused += 1
                    continue
                self._queued[key] = _Queued(w, plan, len(plan))
                plan.append(key)
                self._queued_bytes += w.size
                self._pending[key] = None
                if tag is not None:
                    self._tags[key] = tag
                n += 1
            if tag is not None and self._on_scan is not None:
                self._scan_at[tag] = max(self._scan_alone, math.ceil(self._scan_share * n))
            if n:
                while len(self._threads) < self.lanes:
                    t = threading.Thread(target=self._lane, name="rcds-mount-prefetch", daemon=True)
                    self._threads.append(t)
                    t.start()
                self._cv.notify()  # one lane; it wakes the next if it leaves objects queued
        return n

    def claim(self, items: Iterable[Wanted]) -> list[Wanted]:
        """Mark those of ``items`` neither queued nor in flight as in flight (the caller has
        them downloaded elsewhere and reports them with :meth:`finished`); returns them."""
        out: list[Wanted] = []
        with self._cv:
            if self._closed:
                return out
            pending = self._pending
            for w in items:
                key = (w.hash, w.kind)
                if key not in pending and w.size > 0:
                    pending[key] = None
                    out.append(w)
        return out

    def finished(self, items: list[Wanted], ok: bool) -> None:
        """Objects claimed (:meth:`claim`) or sent to a worker are done: in the local cache if
        ``ok``, else not brought (readers fetch them themselves); their waiters are released."""
        self._finished(items, ok)

    def queued_objects(self) -> int:
        """Objects waiting in the queue."""
        return len(self._queued)

    def pending(self, h: ContentHash, kind: ObjectKind) -> bool:
        """True if the object is queued or being downloaded."""
        return (h, kind) in self._pending

    def _use_workers(self) -> bool:
        """True if downloads go to the worker processes now."""
        w = self.workers
        return w is not None and w.alive and time.monotonic() >= self._trouble_until

    def wait(
        self,
        h: ContentHash,
        kind: ObjectKind,
        timeout: float = WAIT,
        size: int | None = None,
        compressed: bool = True,
    ) -> None:
        """Before a read fetches an object: if it is still queued, fetch it now with the run of
        queued objects planned after it; if it is being downloaded, wait (at most ``timeout``
        seconds) until it is done (see the module docstring). With worker processes, the run
        goes to a worker, and so does an object neither queued nor in flight (given its plain
        ``size``) that is not cached: the read waits for it and then reads the cache."""
        key = (h, kind)
        workers = self._use_workers()
        if key not in self._pending and (
            not workers or size is None or size <= 0 or self.source.is_cached(h, kind)
        ):
            return
        single: Wanted | None = None
        lock: threading.Lock | None = None
        run: list[Wanted] = []
        scanned: str | None = None
        with self._cv:
            if self._closed:
                return
            tag = self._tags.get(key)
            if tag is not None and tag in self.demand:
                self.demand[tag] = demanded = self.demand[tag] + 1
                if demanded == self._scan_at.get(tag):
                    scanned = tag
            if key not in self._pending:
                if not workers or size is None:
                    return
                single = Wanted(h, kind, size, compressed)
                lock = self._pending[key] = threading.Lock()
                lock.acquire()
                self.singles += 1
            elif key in self._queued:
                run = self._take_run(key)
                self.taken += len(run)
                self.runs += 1
                if workers:
                    lock = self._pending[key] = threading.Lock()
                    lock.acquire()
            else:
                self.waited += 1
                lock = self._pending[key]
                if lock is None:
                    lock = self._pending[key] = threading.Lock()
                    lock.acquire()
        if scanned is not None and self._on_scan is not None:
            self._on_scan(scanned)
        if single is not None:
            run = [single]
        if run:
            if workers and self.workers is not None and self.workers.submit(run, self._finished, urgent=True):
                self._await(lock, max(timeout, WORKER_WAIT))  # its worker takes it next
                return
            self._download(run, reader=True)  # releases the lock made above, if any
            return
        self._await(lock, timeout)

    @staticmethod
    def _await(lock: threading.Lock | None, timeout: float) -> None:
        no_wakeup_preemption()
        if lock is not None and lock.acquire(timeout=timeout):
            lock.release()  # pass it on: another reader may wait for the same object

    def _finished(self, items: list[Wanted], ok: bool) -> None:
        """A worker's report (on its receiving thread): ``items`` in the cache, or not brought."""
        if ok:
            self._done(items, len(items))
            return
        with self._cv:
            self.failed += len(items)
            self._trouble_until = time.monotonic() + TROUBLE_SECONDS
        self._done(items)

    def _take_run(self, key: Key) -> list[Wanted]:
        """Under the lock: ``key`` and the queued objects planned after it, off the queue."""
        first = self._queued.pop(key)
        run = [first.wanted]
        size = first.wanted.size
        plan = first.plan
        for k in plan[first.index + 1 : first.index + 1 + 2 * RUN_OBJECTS]:
            if len(run) >= RUN_OBJECTS or size >= RUN_BYTES:
                break
            q = self._queued.pop(k, None)
            if q is not None:
                run.append(q.wanted)
                size += q.wanted.size
        self._queued_bytes -= size
        return run

    def _lane(self) -> None:
        while True:
            with self._cv:
                while not self._queued and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                batch: list[Wanted] = []
                size = 0
                most, most_bytes = (
                    (WORKER_BATCH_OBJECTS, WORKER_BATCH_BYTES)
                    if self.workers
                    else (BATCH_OBJECTS, BATCH_BYTES)
                )
                while self._queued and len(batch) < most and size < most_bytes:
                    _, q = self._queued.popitem(last=False)
                    self._queued_bytes -= q.wanted.size
                    batch.append(q.wanted)
                    size += q.wanted.size
                if self._queued:
                    self._cv.notify()
            self._download(batch)

    def _download(self, batch: list[Wanted], reader: bool = False) -> None:
        """Fetch ``batch`` (what the cache lacks) into the local cache; release every waiter.

        ``reader``: the caller needs ``batch[0]`` first; it receives the exchange itself for up
        to :data:`RUN_PATIENCE` seconds, and, once its object is in, leaves what is still to
        come to a finishing thread (a slow server answering one request after the other must
        not keep a reader waiting for its neighbours' objects).

        A lane's batch goes to a worker process if there are any (which skips what is cached),
        and the lane waits until every object of it is reported.
        """
        if not reader and self.workers is not None and self._use_workers():
            left = [len(batch)]
            over = threading.Event()

            def finished(items: list[Wanted], ok: bool) -> None:
                self._finished(items, ok)
                left[0] -= len(items)
                if left[0] <= 0:
                    over.set()

            if self.workers.submit(batch, finished):
                while not over.wait(1.0) and not self._closed:
                    pass
                return
        is_cached = self.source.is_cached
        todo: list[Wanted] = []
        cached: list[Wanted] = []
        for w in batch:
            (cached if is_cached(w.hash, w.kind) else todo).append(w)
        if cached:
            self._done(cached)
        received = _Received(todo, fetch_objects(self.source, todo, keep=True))
        if reader and todo and todo[0] is batch[0] and len(todo) > 1:
            patience = time.monotonic() + RUN_PATIENCE
            if self._receive(received, until=0) or self._receive(received, deadline=patience):
                return
            with self._cv:
                if self._finisher is None:
                    self._finisher = ThreadPoolExecutor(
                        FINISHERS, thread_name_prefix="rcds-mount-prefetch-run"
                    )
                finisher = self._finisher
            try:
                finisher.submit(self._receive, received)
                return
            except RuntimeError:  # shut down meanwhile: receive the rest here
                pass
        self._receive(received)

    def _receive(self, received: _Received, until: int | None = None, deadline: float | None = None) -> bool:
        """Receive objects of ``received`` (up to and including index ``until`` if given, and
        no more once ``deadline`` passed); True once the exchange is over (every object released)."""
        todo = received.todo
        fetched = received.fetched
        done: list[Wanted] = []
        since = 0.0
        over = True
        try:
            for i, _ in received.objects:
                fetched[i] = True
                done.append(todo[i])
                if i == until or (deadline is not None and time.monotonic() > deadline):
                    over = False
                    break
                if len(done) == 1:
                    since = time.monotonic()
                elif len(done) >= WAKE_EVERY or time.monotonic() - since > WAKE_DELAY:
                    self._done(done, len(done))
                    done = []
        except (RcdsError, FetchError, OSError) as exc:
            missing = fetched.count(False)
            with self._cv:
                self.failed += missing
            log.info("prefetch of %d objects stopped (reads fetch them themselves): %s", missing, exc)
        except BaseException:  # a bug: never leave a reader waiting on it
            log.exception("prefetch lane failed")
            raise
        finally:
            n = len(done)
            if over:
                received.objects.close()
                done += [w for w, ok in zip(todo, fetched, strict=True) if not ok]
            self._done(done, n)
        return over

    def _done(self, items: list[Wanted], fetched: int = 0) -> None:
        """Release ``items`` (fetched, cached already or failed); count ``fetched`` more."""
        with self._cv:
            self.fetched += fetched
            locks = [self._pending.pop((w.hash, w.kind), None) for w in items]
            if self._tags:
                for w in items:
                    self._tags.pop((w.hash, w.kind), None)
        for lock in locks:
            if lock is not None:
                lock.release()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the lanes: drop the queue, release every waiter (a download in progress may
        finish in the background, its thread is a daemon)."""
        with self._cv:
            self._closed = True
            self._queued.clear()
            self._queued_bytes = 0
            locks = [lock for lock in self._pending.values() if lock is not None]
            self._pending.clear()
            self._tags.clear()
            self._cv.notify_all()
            threads = list(self._threads)
            finisher = self._finisher
        for lock in locks:
            lock.release()
        if finisher is not None:
            finisher.shutdown(wait=False, cancel_futures=True)
        if self.workers is not None:
            self.workers.close()
        for t in threads:
            t.join(timeout)
