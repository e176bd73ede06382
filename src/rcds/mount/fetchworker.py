"""The worker process side of the mount's cold path (see :mod:`rcds.mount.fetchprocs`).

A worker is a fresh interpreter (:class:`rcds.workerproc.WorkerProcess`) running :func:`serve`
on two inherited pipe ends. Its first request is a :class:`~rcds.client.get.worker.Setup`
(servers in the daemon's current order, proxies, network settings, local and alien cache);
every further request is ``(number, urgent, [(digest, algorithm, kind, size, compressed), ...])``:
objects to bring into the local cache. It answers, a group of objects at a time:

* ``("done", number, [index, ...], evictions)``: these objects of batch ``number`` are in the
  local cache (files renamed into place, rows in the cache database: quota accounted, by this
  process, under the cache's own lock); ``evictions``: objects the quota evicted meanwhile;
* ``("failed", number, [index, ...], message)``: these were not brought (the batch is over): no
  server had them intact, or the cache refused them. The daemon's reads fetch them themselves.

Objects are downloaded in one pipelined exchange per batch
(:meth:`Fetcher.fetch_many <rcds.net.fetcher.Fetcher.fetch_many>`: fail-over and bad data
retried without caches and elsewhere, as in the daemon), verified
(:func:`~rcds.format.wholeinflate.verify_sized`: hash, inflate, plain size), and handed to a
committing thread, which writes whatever has accumulated with
:meth:`LocalCache.insert_many <rcds.client.cache.local.LocalCache.insert_many>` (temp files,
one lock and one transaction, atomic renames) and then reports it: the download goes on while
a group is committed, and a group is as large as what arrived meanwhile. Objects already in the
cache are reported at once; with an alien cache, objects are taken from it first and stored
raw into it as in :func:`rcds.client.fetch.bulk.fetch_objects`. Objects larger than
:data:`~rcds.client.cache.source.STREAM_THRESHOLD` are streamed into the cache by
:meth:`CachedSource.open_object <rcds.client.cache.source.CachedSource.open_object>`.

Urgent batches (a reader waits for their first object) have a downloading thread of their own
(see :class:`_Worker`), so they never wait behind a prefetch batch. At end of
file on the request pipe (the daemon stopped, or was killed) the worker exits at once: a
temp file it leaves in the cache's ``txn/`` is removed by the next process that opens the cache
(its writer is dead), and a database row without its file is healed on lookup.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, cast

from rcds.client.get.pipes import Receiver, Sender
from rcds.client.get.worker import Setup, wire_name
from rcds.errors import RcdsError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.format.wholeinflate import verify_sized
from rcds.net.failures import FetchError

if TYPE_CHECKING:
    from rcds.client.cache.source import CachedSource

WireObject = tuple[bytes, str, str, int, bool]
"""An object as sent: digest, algorithm value, kind value, plain size, stored compressed."""

COMMIT_OBJECTS = 256
COMMIT_BYTES = 16 << 20
"""A commit takes at most this many objects / plain bytes."""
MAX_WAITING_BYTES = 64 << 20
"""Verified bytes waiting for their commit at most; the download waits beyond."""
STREAM_MIN = 64 << 20
"""Objects larger than this are streamed into the cache (the source's stream threshold)."""

_Item = tuple[int, int, str, str, "bytes | bytearray | None"]
"""A queued commit: batch number, index (-1: a failure marker), cache name, kind value, plain
bytes (None: in the cache already)."""

_ALGORITHMS = {a.value: a for a in Algorithm}
_KINDS = {k.value: k for k in ObjectKind}


def wire_object(h: ContentHash, kind: ObjectKind, size: int, compressed: bool) -> WireObject:
    """An object as sent to a worker."""
    return (h.digest, h.algorithm._value_, kind._value_, size, compressed)


class _Committer:
    """The committing thread: verified objects in, ``done`` replies out (the only sender)."""

    def __init__(self, source: CachedSource, replies: Sender) -> None:
        self.source = source
        self.replies = replies
        self._cv = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._failures: deque[tuple[int, list[int], str]] = deque()
        self._bytes = 0
        self._idle = False
        self._evictions = source.cache.evictions
        threading.Thread(target=self._run, name="rcds-fetch-commit", daemon=True).start()

    def put(self, number: int, index: int, name: str, kind: str, plain: bytes | bytearray | None) -> None:
        """Queue a verified object (cache name, kind value; ``plain`` None: in the cache already)
        of batch ``number``. Only an idle committer is woken: one that is committing takes what
        accumulated meanwhile when it is done, without a wake-up per object."""
        with self._cv:
            while self._bytes > MAX_WAITING_BYTES:
                self._cv.wait(1.0)
            self._queue.append((number, index, name, kind, plain))
            if plain is not None:
                self._bytes += len(plain)
            if self._idle:
                self._cv.notify_all()

    def fail(self, number: int, indices: list[int], message: str) -> None:
        """Report ``indices`` of batch ``number`` as not brought, after what is queued before."""
        with self._cv:
            self._queue.append((number, -1, "", "", None))
            self._failures.append((number, indices, message))
            self._cv.notify_all()

    def _take(self) -> list[_Item]:
        with self._cv:
            while not self._queue:
                self._idle = True
                self._cv.wait()
            self._idle = False
            items: list[_Item] = []
            size = 0
            while self._queue and len(items) < COMMIT_OBJECTS and size < COMMIT_BYTES:
                item = self._queue.popleft()
                items.append(item)
                if item[1] < 0:
                    break  # a failure: sent after what came before it
                size += len(item[4]) if item[4] is not None else 0
            return items

    def _run(self) -> None:
        cache = self.source.cache
        try:
            while True:
                items = self._take()
                failure = None
                if items[-1][1] < 0:
                    items.pop()
                    with self._cv:
                        failure = self._failures.popleft()
                plain = [(name, kind, data) for _, _, name, kind, data in items if data is not None]
                ok = True
                message = ""
                if plain:
                    try:
                        cache.insert_named(plain)
                    except (RcdsError, OSError) as exc:
                        ok = False
                        message = f"cannot write into the cache {cache.dir}: {exc}"
                size = sum(len(data) for _, _, data in plain)
                with self._cv:
                    self._bytes -= size
                    self._cv.notify_all()
                self._send(items, ok, message)
                if failure is not None:
                    self.replies.send(("failed", *failure))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            os._exit(0)  # the daemon is gone

    def _send(self, items: list[_Item], ok: bool, message: str) -> None:
        by_batch: dict[int, list[int]] = {}
        for number, index, _, _, _ in items:
            by_batch.setdefault(number, []).append(index)
        evictions = self.source.cache.evictions - self._evictions
        self._evictions += evictions
        for number, indices in by_batch.items():
            if ok:
                self.replies.send(("done", number, indices, evictions))
                evictions = 0
            else:
                self.replies.send(("failed", number, indices, message))


class _Worker:
    """The downloading threads: batches in, verified objects to the committer.

    Two threads, each one pipelined exchange at a time: one takes urgent batches only (a
    reader waits for them: they never wait behind a prefetch batch), the other takes the
    others, and urgent ones too while the first is busy."""

    def __init__(self, source: CachedSource, committer: _Committer) -> None:
        self.source = source
        self.committer = committer
        self._cv = threading.Condition()
        self._urgent: deque[tuple[int, list[WireObject]]] = deque()
        self._bulk: deque[tuple[int, list[WireObject]]] = deque()

    def start(self) -> None:
        """Start the threads."""
        for urgent_only in (True, False):
            threading.Thread(target=self._run, args=(urgent_only,), name="rcds-fetch", daemon=True).start()

    def add(self, number: int, urgent: bool, batch: list[WireObject]) -> None:
        """Queue a batch (``urgent``: before the others)."""
        with self._cv:
            (self._urgent if urgent else self._bulk).append((number, batch))
            self._cv.notify_all()

    def _run(self, urgent_only: bool) -> None:
        while True:
            with self._cv:
                while not self._urgent and (urgent_only or not self._bulk):
                    self._cv.wait()
                number, batch = self._urgent.popleft() if self._urgent else self._bulk.popleft()
            self._batch(number, batch)

    def _batch(self, number: int, batch: Sequence[WireObject]) -> None:
        source = self.source
        put = self.committer.put
        cache_dir = str(source.cache.dir)
        exists = os.path.exists
        alien = source.alien
        todo: list[int] = []
        names: list[str] = []
        """Of each object of ``todo``: its repository object name."""
        for i, (digest, algorithm, kind_value, size, compressed) in enumerate(batch):
            name = wire_name(digest, algorithm, kind_value)
            if exists(cache_dir + name[4:]):
                put(number, i, name[5:], kind_value, None)
                continue
            if alien is not None:
                h = ContentHash(_ALGORITHMS[algorithm], digest)
                found = alien.get_verified(h, _KINDS[kind_value], size, compressed=compressed)
                if found is not None:
                    source.count("alien")
                    put(number, i, name[5:], kind_value, bytes(found))
                    continue
            todo.append(i)
            names.append(name)
        done: set[int] = set()
        try:
            small: list[int] = []
            small_names: list[str] = []
            for i, name in zip(todo, names, strict=True):
                digest, algorithm, kind_value, size, compressed = batch[i]
                if size <= STREAM_MIN:
                    small.append(i)
                    small_names.append(name)
                    continue
                h, kind = ContentHash(_ALGORITHMS[algorithm], digest), _KINDS[kind_value]
                with source.open_object(h, kind, size=size, compressed=compressed, keep=True):
                    pass  # streamed into the cache, committed at once
                source.inserter.flush()
                done.add(i)
                put(number, i, name[5:], kind_value, None)

            def verify(k: int, raw: bytes) -> tuple[bytes, bytes | bytearray]:
                digest, algorithm, _, size, compressed = batch[small[k]]
                h = ContentHash(_ALGORITHMS[algorithm], digest)
                return raw, verify_sized(raw, h, size, compressed=compressed, what=small_names[k])

            for k, (raw, plain) in source.fetcher.fetch_many(small_names, verify):
                i = small[k]
                kind_value = batch[i][2]
                done.add(i)
                if alien is not None:
                    with suppress(RcdsError, OSError):  # best effort: the local cache has it
                        alien.put_raw(
                            ContentHash(_ALGORITHMS[batch[i][1]], batch[i][0]),
                            _KINDS[kind_value],
                            raw,
                            verify=False,
                        )
                put(number, i, small_names[k][5:], kind_value, plain)
            source.count("network", len(small))
        except (RcdsError, FetchError, OSError) as exc:
            self.committer.fail(number, [i for i in todo if i not in done], str(exc).splitlines()[0])


def serve(request_fd: int, reply_fd: int) -> None:
    """The worker's main loop (see the module docstring): it receives requests; a thread
    downloads, another commits and replies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides
    gc.disable()  # thousands of short-lived tuples per batch, none in cycles
    requests = Receiver(request_fd)
    replies = Sender(reply_fd)
    try:
        setup = requests.recv()
    except EOFError:
        return
    assert isinstance(setup, Setup)
    source = setup.open()
    worker = _Worker(source, _Committer(source, replies))
    worker.start()
    replies.send(("ready",))
    while True:
        try:
            number, urgent, batch = cast(tuple[int, bool, list[WireObject]], requests.recv())
        except (EOFError, OSError):
            os._exit(0)  # the daemon stopped or died: nothing here is worth finishing
        worker.add(number, urgent, batch)
