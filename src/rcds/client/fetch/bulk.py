"""Fetching many objects at once: the batch path of ``rcds get`` (in-process and in its workers).

Reading objects one by one costs one HTTP round trip each. :func:`fetch_objects` takes a list of
objects (usually the ones missing from the local cache), serves what the alien cache has, and
downloads the rest with :meth:`rcds.net.fetcher.Fetcher.fetch_many` (pipelined requests) in
batches, so that the bytes in flight stay bounded. Every object is verified (hash, inflate,
plain size) inside the fetcher's validation, so bad data is retried without caches and then on
the next host exactly like a single download. Verified objects are handed to the caller in
completion order and, unless told otherwise, queued for the local cache (and raw into the
alien cache).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Sequence
from typing import NamedTuple

from rcds.client.cache.source import CachedSource
from rcds.errors import StorageError
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.format.wholeinflate import verify_sized
from rcds.net.failures import FetchError
from rcds.repo.http_source import translate

log = logging.getLogger("rcds.client")

BULK_MAX_OBJECT = 8 << 20
"""Objects with a larger plain size are fetched one by one (streamed into the cache)."""

BATCH_OBJECTS = 4096
BATCH_BYTES = 64 << 20
"""One :meth:`~rcds.net.fetcher.Fetcher.fetch_many` call covers at most this many objects/plain bytes."""


class Wanted(NamedTuple):
    """An object to fetch: hash, kind, plain size and whether it is stored compressed."""

    hash: ContentHash
    kind: ObjectKind
    size: int
    compressed: bool = True

    @property
    def name(self) -> str:
        """The object's path below the repository base URL (``data/ab/…``)."""
        return self.hash.object_name(self.kind)


def batches(
    wanted: Sequence[Wanted], max_objects: int = BATCH_OBJECTS, max_bytes: int = BATCH_BYTES
) -> Iterator[list[int]]:
    """Indices of ``wanted`` in consecutive groups of bounded count and plain size."""
    group: list[int] = []
    size = 0
    for i, w in enumerate(wanted):
        if group and (len(group) >= max_objects or size + w.size > max_bytes):
            yield group
            group, size = [], 0
        group.append(i)
        size += w.size
    if group:
        yield group


def fetch_objects(
    source: CachedSource, wanted: Sequence[Wanted], *, keep: bool = True
) -> Generator[tuple[int, bytes | bytearray], None, None]:
    """Yield ``(index into wanted, verified plain bytes)`` for every object, in completion order.

    The local cache is not consulted (pass what it lacks, see :meth:`CachedSource.cached`).
    With ``keep`` the objects are queued for the local cache and stored raw in the alien cache.
    Raises :class:`~rcds.errors.NotFoundError`, :class:`~rcds.errors.IntegrityError` or
    :class:`~rcds.net.failures.FetchError` like :meth:`CachedSource.open_object` for an object
    no server has intact; objects yielded before stay valid.
    """
    todo: list[int] = []
    for i, w in enumerate(wanted):
        if w.size > BULK_MAX_OBJECT:  # large: one by one, streamed into the cache when kept
            with source.open_object(w.hash, w.kind, size=w.size, compressed=w.compressed, keep=keep) as f:
                yield i, f.read()
            continue
        if source.alien is not None:
            found = source.alien.get_verified(w.hash, w.kind, w.size, compressed=w.compressed)
            if found is not None:
                source.count("alien")
                if keep:
                    source.inserter.put(w.hash, w.kind, found)
                yield i, found
                continue
        todo.append(i)
    alien = source.alien if keep else None
    for group in batches([wanted[i] for i in todo]):
        items = [wanted[todo[g]] for g in group]
        names = [w.name for w in items]

        def validate(
            k: int, raw: bytes, items: list[Wanted] = items, names: list[str] = names
        ) -> tuple[bytes, bytes | bytearray]:
            w = items[k]
            return raw, verify_sized(raw, w.hash, w.size, compressed=w.compressed, what=names[k])

        received = 0
        try:
            for k, (raw, plain) in source.fetcher.fetch_many(names, validate):
                w = items[k]
                received += 1
                if keep:
                    source.inserter.put(w.hash, w.kind, bytes(plain))
                if alien is not None:
                    try:
                        alien.put_raw(w.hash, w.kind, raw, verify=False)
                    except (StorageError, OSError) as exc:
                        log.warning("cannot add %s to the alien cache: %s", w.name, exc)
                yield todo[group[k]], plain
        except FetchError as exc:
            raise translate(exc.path, exc) from exc
        finally:
            source.count("network", received)  # once per batch: a lock per object costs
