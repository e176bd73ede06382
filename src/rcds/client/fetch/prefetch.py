""":meth:`Repository.prefetch <rcds.client.repository.Repository.prefetch>`: the objects of many
files in pipelined batches, inflated and cached on a second thread.

Like :func:`rcds.client.fetch.bulk.fetch_objects`, but split in two so that both cores work: the
calling thread downloads (:meth:`~rcds.net.fetcher.Fetcher.fetch_many`) and checks each object's
content hash inside the fetcher's validation, so a corrupt or wrong object is fetched again
without caches and then from the next host as usual; a second thread inflates the hash-checked
bytes, checks their plain size and commits them to the local cache in groups (inflating and
writing files release the GIL, and they are most of the CPU time of a download). The objects
stay in memory until their first read (:meth:`~rcds.client.cache.inserter.BackgroundInserter.commit`),
so reading what was just prefetched opens no file. Only bytes whose hash matched are inflated,
and only checked plain bytes are cached. A hash-checked object that does not inflate to its
catalog size (a publisher fault: every copy is the same bytes) is fetched once more the ordinary
way, which fails over across hosts and raises :class:`~rcds.errors.IntegrityError` naming it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rcds.client.fetch.bulk import BULK_MAX_OBJECT, Wanted, batches
from rcds.client.tree.files import pieces_of
from rcds.errors import IntegrityError, StorageError
from rcds.format.compression import check_hash, hash_matches, inflate_checked
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.net.failures import FetchError
from rcds.repo.http_source import translate

if TYPE_CHECKING:
    from rcds.client.cache.source import CachedSource
    from rcds.client.tree.mounted import Located

log = logging.getLogger("rcds.client")

GROUP_OBJECTS = 128
GROUP_BYTES = 4 << 20
"""The downloader hands objects to the second thread in groups of at most this many objects/raw
bytes; each group is one cache transaction."""
QUEUED_GROUPS = 8
"""Groups waiting for the inflater; the downloader waits when there are more (bounded memory)."""


def wanted_objects(source: CachedSource, files: Iterable[Located]) -> list[Wanted]:
    """The objects of regular files that the local cache lacks, each once (empty files have none)."""
    wanted: dict[tuple[ContentHash, ObjectKind], Wanted] = {}
    cached = source.presence()
    for loc in files:
        for p in pieces_of(loc.entry, loc.catalog):
            key = (p.hash, p.kind)
            if p.size and key not in wanted and not cached(p.hash, p.kind):
                wanted[key] = Wanted(p.hash, p.kind, p.size, loc.entry.compressed)
    return list(wanted.values())


def prefetch(source: CachedSource, files: Iterable[Located]) -> int:
    """Bring the objects of ``files`` into the local cache; return how many were fetched.

    Large objects go one by one (streamed into the cache), objects in the alien cache come from
    there, the rest are downloaded in pipelined batches (see the module docstring).
    """
    todo: list[Wanted] = []
    fetched = 0
    for w in wanted_objects(source, files):
        if w.size > BULK_MAX_OBJECT:
            source.open_object(w.hash, w.kind, size=w.size, compressed=w.compressed).close()
            fetched += 1
            continue
        if source.alien is not None:
            plain = source.alien.get_verified(w.hash, w.kind, w.size, compressed=w.compressed)
            if plain is not None:
                source.count("alien")
                source.inserter.put(w.hash, w.kind, plain, keep=True)
                fetched += 1
                continue
        todo.append(w)
    return fetched + download(source, todo)


def download(source: CachedSource, wanted: Sequence[Wanted]) -> int:
    """Download ``wanted`` (small objects) in pipelined batches into the local cache (and, raw,
    into the alien cache); returns how many. Raises like :meth:`CachedSource.open_object`."""
    if not wanted:
        return 0
    inflater = _Inflater(source)
    done = 0
    try:
        for group in batches(wanted):
            items = [wanted[i] for i in group]

            def validate(k: int, raw: bytes, items: list[Wanted] = items) -> bytes:
                w = items[k]
                if not hash_matches(raw, w.hash):
                    check_hash(raw, w.hash, w.name)  # raises, with the details
                if not w.compressed:  # stored plain: the size is all there is left to check
                    inflate_checked(raw, compressed=False, size=w.size, what=w.name)
                return raw

            try:
                for k, raw in source.fetcher.fetch_many([w.name for w in items], validate):
                    inflater.add(items[k], raw)
                    done += 1
            except FetchError as exc:
                raise translate(exc.path, exc) from exc
    finally:
        source.count("network", done)
        failed = inflater.finish()
    for w in failed:  # authentic bytes that do not inflate right: the ordinary path says why
        source.open_object(w.hash, w.kind, size=w.size, compressed=w.compressed).close()
    return done


class _Inflater:
    """The second thread of :func:`download`: inflate and size-check hash-checked objects, commit
    them to the local cache, kept in memory until read (and the raw bytes to the alien cache)."""

    def __init__(self, source: CachedSource) -> None:
        self.source = source
        self.failed: list[Wanted] = []
        self._group: list[tuple[Wanted, bytes]] = []
        self._group_bytes = 0
        self._queue: queue.Queue[list[tuple[Wanted, bytes]] | None] = queue.Queue(QUEUED_GROUPS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rcds-inflate", daemon=True)
        self._thread.start()

    def add(self, w: Wanted, raw: bytes) -> None:
        """Hand over one hash-checked object (waits while too much is queued)."""
        self._group.append((w, raw))
        self._group_bytes += len(raw)
        if len(self._group) >= GROUP_OBJECTS or self._group_bytes >= GROUP_BYTES:
            self._queue.put(self._group)
            self._group, self._group_bytes = [], 0

    def finish(self) -> list[Wanted]:
        """Wait until everything handed over is done; return the objects that did not inflate."""
        if self._group:
            self._queue.put(self._group)
            self._group = []
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.failed

    def _run(self) -> None:
        while (group := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._inflate(group)
                except BaseException as exc:  # handed to finish(); keep draining the queue
                    self._error = exc

    def _inflate(self, group: list[tuple[Wanted, bytes]]) -> None:
        items: list[tuple[ContentHash, ObjectKind, bytes]] = []
        good: list[tuple[Wanted, bytes]] = []
        for w, raw in group:
            if w.compressed:
                try:
                    plain = inflate_checked(raw, size=w.size)
                except IntegrityError:
                    self.failed.append(w)
                    continue
            else:
                plain = raw
            items.append((w.hash, w.kind, plain))
            good.append((w, raw))
        if items:
            self.source.inserter.commit(items, keep=True)
        alien = self.source.alien
        if alien is not None:
            for w, raw in good:
                try:
                    alien.put_raw(w.hash, w.kind, raw, verify=False)
                except (StorageError, OSError) as exc:
                    log.warning("cannot add %s to the alien cache: %s", w.name, exc)
