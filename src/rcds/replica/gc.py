"""Garbage collection of a replica: delete what none of the revisions clients may still use needs.

The kept revisions are the replica's current root catalog and the ``keep_revisions - 1`` newest
other root catalogs it has served (``.rcds-roots``; a replica that pulls after several upstream
publishes never saw the revisions in between, so the chain of ``previous_revision`` would not
find what clients are really on). Everything reachable from them (nested catalogs, files,
chunks) and the current manifest's certificate, history and meta-info stay.

Deletion keeps the snapshot invariant "a stored catalog has its whole subtree" at every moment,
so a gc killed midway never makes a later snapshot skip an incomplete catalog: unreachable
catalogs go first, each parent before its children, then (after a flush) the other objects.
Runs under the replica lock, so it never overlaps a snapshot.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import ConfigError, IntegrityError, NotFoundError
from rcds.format import manifest as manifest_fmt
from rcds.format.dirent import FLAG_EXTERNAL
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind, parse_object_name
from rcds.replica.snapshot import replica_lock, served_roots, write_roots
from rcds.repo.catalog import Catalog
from rcds.storage.local import LocalStore


@dataclass(frozen=True)
class ReplicaGcResult:
    """What one replica collection did."""

    revisions_kept: int
    reachable: int
    catalogs_deleted: int
    objects_deleted: int
    bytes_freed: int
    seconds: float


def _open_catalog(store: LocalStore, work: Path, name: str, mount: str) -> Catalog:
    db = work / "gc.db"
    db.unlink(missing_ok=True)
    try:
        db.write_bytes(zlib.decompress(store.get(name)))
    except zlib.error as exc:
        raise IntegrityError(f"{store.root}/{name} is not a valid catalog ({exc})", name) from None
    return Catalog(db, mount, what=name)


def _object(digest: bytes, flags: int, kind: ObjectKind) -> str:
    return ContentHash(Algorithm.from_flag_value((flags >> 8) & 7), digest).object_name(kind)


def _mark(store: LocalStore, work: Path, root: ContentHash, live: set[str]) -> None:
    """Add every object reachable from the root catalog ``root`` (as held locally) to ``live``."""
    stack = [(root.object_name(ObjectKind.CATALOG), "")]
    while stack:
        name, mount = stack.pop()
        if name in live:
            continue
        live.add(name)
        with _open_catalog(store, work, name, mount) as cat:
            for raw, flags in cat.db.execute("SELECT hash, flags FROM catalog WHERE hash IS NOT NULL"):
                if raw and not int(flags) & FLAG_EXTERNAL:
                    live.add(_object(bytes(raw), int(flags), ObjectKind.FILE))
            for raw, flags in cat.db.execute(
                "SELECT chunks.hash, catalog.flags FROM chunks JOIN catalog USING (md5path_1, md5path_2)"
            ):
                if raw and not int(flags) & FLAG_EXTERNAL:
                    live.add(_object(bytes(raw), int(flags), ObjectKind.PARTIAL))
            stack.extend((h.object_name(ObjectKind.CATALOG), m) for m, h, _ in cat.nested())


def _parents_first(store: LocalStore, work: Path, catalogs: set[str]) -> list[str]:
    """Order the garbage ``catalogs`` so that each comes before the garbage catalogs it mounts."""
    children: dict[str, list[str]] = {}
    parents = dict.fromkeys(catalogs, 0)
    for name in catalogs:
        try:
            with _open_catalog(store, work, name, "") as cat:
                kids = [h.object_name(ObjectKind.CATALOG) for _, h, _ in cat.nested()]
        except (IntegrityError, NotFoundError):
            kids = []  # unreadable garbage: it guards nothing
        children[name] = [k for k in kids if k in catalogs]
        for k in children[name]:
            parents[k] += 1
    order = [n for n, p in parents.items() if p == 0]
    i = 0
    while i < len(order):
        for k in children[order[i]]:
            parents[k] -= 1
            if parents[k] == 0:
                order.append(k)
        i += 1
    return order + sorted(n for n, p in parents.items() if p > 0)  # a cycle cannot happen (hashes)


def collect_replica(replica_dir: Path, keep_revisions: int = 3) -> ReplicaGcResult:
    """Delete every object of ``replica_dir`` that the kept revisions do not need (see module doc)."""
    if keep_revisions < 1:
        raise ConfigError("--keep-revisions must be at least 1 (the current revision)")
    start = time.monotonic()
    store = LocalStore(Path(replica_dir))
    with replica_lock(store), tempfile.TemporaryDirectory(prefix="rcds-replica-gc-") as tmp:
        work = Path(tmp)
        if not store.has(".cvmfspublished"):
            raise NotFoundError(f"{replica_dir} holds no revision yet; snapshot it before collecting")
        m = manifest_fmt.parse(store.get(".cvmfspublished")).manifest
        live: set[str] = {m.certificate.object_name(ObjectKind.CERTIFICATE)}
        for h, kind in ((m.history, ObjectKind.HISTORY), (m.metainfo, ObjectKind.METAINFO)):
            if h is not None:
                live.add(h.object_name(kind))
        kept = [m.root_catalog]
        for r in reversed(served_roots(store.root)):
            if len(kept) >= keep_revisions:
                break
            if r not in kept and store.has(r.object_name(ObjectKind.CATALOG)):
                kept.append(r)
        for r in kept:
            _mark(store, work, r, live)
        garbage = [n for n in store.list_objects() if n not in live]
        catalogs = {n for n in garbage if parse_object_name(n)[1] is ObjectKind.CATALOG}
        cats_deleted, freed = _delete(store, _parents_first(store, work, catalogs))
        store.sync()  # no catalog may outlive, on disk, the objects it names
        objs_deleted, objs_freed = _delete(store, (n for n in garbage if n not in catalogs))
        write_roots(store.root, list(reversed(kept)))
    return ReplicaGcResult(
        revisions_kept=len(kept),
        reachable=len(live),
        catalogs_deleted=cats_deleted,
        objects_deleted=objs_deleted,
        bytes_freed=freed + objs_freed,
        seconds=time.monotonic() - start,
    )


def _delete(store: LocalStore, names: Iterable[str]) -> tuple[int, int]:
    count = size = 0
    for name in names:
        try:
            n = store.size(name)
        except NotFoundError:
            continue
        if store.delete(name):
            count, size = count + 1, size + n
    return count, size
