"""The downloads of ``rcds get``: every single-object file, one download per object.

:class:`Downloads` takes the files of the plan as the walk finds them (:meth:`Downloads.add`).
Files with the same object share one download; an object in the local cache is copied from
it instead (after the walk). With many objects the downloads run in worker processes
(:mod:`rcds.client.get.procs`), started when the walk has found :data:`MIN_OBJECTS` objects to
download; they get their first batches while the walk goes on, so that listing the catalogs
and downloading overlap. An object met again after its batch went out is downloaded again
(the walk runs well ahead of the downloads, so that is rare). With fewer objects, or without
processes, the downloads run after the walk in :data:`LANES` threads of this process
(:func:`rcds.client.fetch.bulk.fetch_objects`: pipelined batches).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import threading
from collections.abc import Callable
from typing import BinaryIO, NamedTuple

from rcds.client.cache.listing import CacheListing
from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted, fetch_objects
from rcds.client.get.fs import copy_into, write_file
from rcds.client.get.procs import GetProcesses
from rcds.client.get.worker import Setup, Target, WireJob, WireTarget, wire_job
from rcds.client.tree.files import Piece

log = logging.getLogger("rcds.client")

__all__ = ["LANES", "MIN_OBJECTS", "Downloads", "PlannedFile"]

MIN_OBJECTS = 1000
"""Fewer objects to download than this: no worker processes."""
LANES = 2
"""Downloader threads without processes (inflate, hash and write release the GIL)."""
FEED_EVERY = 64
"""While the walk goes on, the workers are offered batches every this many new objects."""


class PlannedFile(NamedTuple):
    """A regular file of the copy: its path below the destination, attributes, pieces, content
    key and whether its objects are stored compressed.

    ``attrs`` are the fields of a :class:`~rcds.client.get.worker.Target` as a plain tuple
    (destination, repository path, mode, size, mtime, mtimens): what a job sends as it is.
    """

    rel: str
    attrs: WireTarget
    pieces: tuple[Piece, ...]
    key: str
    compressed: bool

    def target(self) -> Target:
        """:attr:`attrs` with names (what :func:`~rcds.client.get.fs.write_file` takes)."""
        return _NEW(Target, self.attrs)


_Key = tuple[str, bool]
"""A file's content key and whether stored compressed: its object, for a one-object file."""
_NEW = tuple.__new__


class Downloads:
    """The single-object files of one copy, written as their objects arrive.

    ``path(rel)`` is a file's destination; ``done(file)`` is called once it is in place (from
    other threads too: it must be thread safe). :meth:`finish` writes whatever is left and
    returns when every file added is in place; :meth:`close` stops the worker processes (if
    any) at once.
    """

    def __init__(
        self,
        source: CachedSource,
        path: Callable[[str], str],
        done: Callable[[PlannedFile], None],
        keep: bool,
        processes: int,
        done_many: Callable[[list[PlannedFile]], None] | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self.done = done
        self.done_many = done_many
        """Called for the files of a whole batch at once, if given (else ``done`` for each)."""
        self.keep = keep
        self.processes = processes
        self.procs: GetProcesses | None = None
        self.wanted: list[Wanted] = []
        """The objects to download, in the order found."""
        self.users: list[list[PlannedFile]] = []
        """The files of each object of :attr:`wanted`."""
        self.sent = 0
        """``wanted[:sent]`` went to the worker processes already."""
        self.from_cache: dict[_Key, list[PlannedFile]] = {}
        self._index: dict[_Key, tuple[int, list[PlannedFile]]] = {}
        """Each object met: its index in :attr:`wanted` (-1 if it is copied from the cache) and
        its files (the list in :attr:`users` or :attr:`from_cache`)."""
        self._cached = source.presence()
        self._empty = CacheListing(str(source.cache.dir)).bucket_is_empty
        self._abort = threading.Event()

    def add(self, f: PlannedFile) -> None:
        """Plan ``f`` (a file of one piece, not empty, not yet in place).

        An object whose cache directory is empty (a fresh cache) is downloaded without asking
        the cache further; the cache's queue of objects not yet written is then not consulted
        either: an object queued there by an earlier read of this process (in a library caller)
        is downloaded again, which costs a download, never correctness.
        """
        p = f.pieces[0]
        compressed = f.compressed
        key = (f.key, compressed)
        found = self._index.get(key)
        if found is not None:
            i, files = found
            if i < 0 or i >= self.sent:  # copied from the cache, or not downloading yet: share it
                files.append(f)
                return
        h = p.hash
        files = [f]
        if not self._empty(h.digest[0]) and self._cached(h, p.kind):  # copied in finish(): size checked
            self._index[key] = (-1, files)
            self.from_cache[key] = files
            return
        self._index[key] = (len(self.wanted), files)
        self.wanted.append(_NEW(Wanted, (p.hash, p.kind, p.size, compressed)))
        self.users.append(files)
        if len(self.wanted) % FEED_EVERY == 0:
            if self.procs is None and self.processes and len(self.wanted) >= MIN_OBJECTS:
                self._start_processes()
            if self.procs is not None:
                self.sent = self.procs.feed(self.wanted, self.sent, self._jobs)

    def _start_processes(self) -> None:
        """Start the worker processes and give them the setup; threads if they cannot start."""
        try:
            self.procs = GetProcesses(self.processes)
        except OSError as exc:  # e.g. no more processes allowed
            log.warning("cannot start download worker processes (%s); downloading in this process", exc)
            self.processes = 0
            return
        self.procs.start(Setup.of(self.source, self.keep), self._batch_done)

    def _jobs(self, part: range) -> list[WireJob]:
        wanted, users = self.wanted, self.users
        jobs = []
        for i in part:
            w = wanted[i]
            jobs.append(wire_job(w.hash, w.kind, w.size, w.compressed, [f.attrs for f in users[i]]))
        return jobs

    def _batch_done(self, part: range) -> None:
        users = self.users
        if self.done_many is not None:
            self.done_many([f for i in part for f in users[i]])
            return
        for i in part:
            for f in users[i]:
                self.done(f)

    def finish(self) -> None:
        """Copy the cached objects, download the rest; return once every file is in place."""
        for group in self.from_cache.values():
            h, kind, size = group[0].pieces[0].hash, group[0].pieces[0].kind, group[0].pieces[0].size
            obj = self.source.cached(h, kind, size)
            if obj is None:  # evicted meanwhile (another process): download it after all
                self.wanted.append(Wanted(h, kind, size, group[0].compressed))
                self.users.append(group)
                continue
            with obj:
                fill = functools.partial(_copy_from, obj, size)
                for f in group:
                    obj.seek(0)
                    write_file(self.path(f.rel), f.target(), fill=fill)
                    self.done(f)
        self.from_cache.clear()
        procs, self.procs = self.procs, None
        if procs is not None:
            try:
                procs.finish(self.wanted, self.sent, self._jobs)
            finally:
                for where, n in procs.stats.items():
                    self.source.count(where, n)
        elif self.wanted:
            self._download_in_threads()

    def _download_in_threads(self) -> None:
        """Several downloaders, each with its own pipelined batches over a share of the objects."""
        wanted, users = self.wanted, self.users
        lanes = max(1, min(LANES, len(wanted) // 64))
        step = -(-len(wanted) // lanes)  # contiguous shares: lanes mostly write to different directories
        shares = [list(range(k, min(k + step, len(wanted)))) for k in range(0, len(wanted), step)]

        def lane(share: list[int]) -> None:
            for i, plain in fetch_objects(self.source, [wanted[j] for j in share], keep=self.keep):
                if self._abort.is_set():
                    return  # another lane failed
                for f in users[share[i]]:
                    write_file(self.path(f.rel), f.target(), plain)
                    self.done(f)

        if lanes == 1:
            lane(shares[0])
            return
        with cf.ThreadPoolExecutor(lanes, thread_name_prefix="rcds-get-bulk") as pool:
            futures = [pool.submit(lane, share) for share in shares]
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
            except BaseException:
                self._abort.set()
                raise

    def close(self) -> None:
        """Stop the worker processes now, if any are running (idempotent)."""
        procs, self.procs = self.procs, None
        if procs is not None:
            procs.close(kill=True)


def _copy_from(obj: BinaryIO, size: int, fd: int) -> int:
    return copy_into(obj, fd, size)
