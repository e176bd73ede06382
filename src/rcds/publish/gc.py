"""Garbage collection: delete objects unreachable from the newest N revisions.

Reachability is a mark phase over the root catalogs of the kept revisions (found by following
the root catalog's ``previous_revision``), every nested catalog below them, and every object
and chunk they name, plus the certificate and other manifest objects. Runs under the writer
lock, so no publish can add objects meanwhile; readers of the kept revisions are unaffected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import ConfigError, NotFoundError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.publish.chain import load_catalog_file
from rcds.repo.catalog import Catalog
from rcds.storage.base import Store


@dataclass(frozen=True)
class GcResult:
    """What a collection did."""

    revisions_kept: int
    reachable: int
    deleted: int
    bytes_freed: int
    seconds: float


def _mark_catalog(
    store: Store, work: Path, h: ContentHash, mount: str, live: set[str], seen: set[ContentHash]
) -> ContentHash | None:
    """Mark a catalog tree; return the catalog's previous revision (for roots)."""
    stack = [(h, mount)]
    previous: ContentHash | None = None
    first = True
    while stack:
        ch, m = stack.pop()
        if ch in seen:
            continue
        seen.add(ch)
        live.add(ch.object_name(ObjectKind.CATALOG))
        path = load_catalog_file(store, work, ch, None)
        try:
            with Catalog(path, m) as cat:
                if first:
                    previous = cat.previous_revision
                    first = False
                for raw, flags in cat.db.execute("SELECT hash, flags FROM catalog WHERE hash IS NOT NULL"):
                    live.add(_object_name(bytes(raw), int(flags), ObjectKind.FILE))
                for raw, flags in cat.db.execute(
                    "SELECT chunks.hash, catalog.flags FROM chunks JOIN catalog USING (md5path_1, md5path_2)"
                ):
                    live.add(_object_name(bytes(raw), int(flags), ObjectKind.PARTIAL))
                stack.extend((nh, nm) for nm, nh, _ in cat.nested())
        finally:
            path.unlink(missing_ok=True)
    return previous


def _object_name(digest: bytes, flags: int, kind: ObjectKind) -> str:
    return ContentHash(Algorithm.from_flag_value((flags >> 8) & 7), digest).object_name(kind)


def collect(store: Store, work: Path, root: ContentHash, extra: list[str], keep_revisions: int) -> GcResult:
    """Delete every object not reachable from ``root`` and its ``keep_revisions - 1`` predecessors."""
    if keep_revisions < 1:
        raise ConfigError("--keep-revisions must be at least 1 (the current revision)")
    start = time.monotonic()
    live: set[str] = set(extra)
    seen: set[ContentHash] = set()
    current: ContentHash | None = root
    kept = 0
    while current is not None and kept < keep_revisions:
        try:
            current = _mark_catalog(store, work, current, "", live, seen)
        except NotFoundError:
            break  # an older revision was collected before: nothing more to keep
        kept += 1
    store.clean_temp()  # unfinished uploads of a crashed writer (S3 multipart)
    deleted = freed = 0
    for name in list(store.list_objects()):
        if name not in live:
            size = store.size(name)
            if store.delete(name):
                deleted += 1
                freed += size
    return GcResult(kept, len(live), deleted, freed, time.monotonic() - start)
