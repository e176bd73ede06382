"""The full check a suspicious client would do, over every catalog and object of a revision.

Stops at the first broken thing with an IntegrityError naming it (path or object, expected vs found).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError, NotFoundError
from rcds.format.catalog_schema import SCHEMA, Tally
from rcds.format.dirent import Dirent
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.repo.catalog import Catalog
from rcds.repo.source import Source
from rcds.repo.view import RepositoryView, establish_trust


@dataclass
class VerifyReport:
    """What was checked."""

    revision: int = 0
    catalogs: int = 0
    entries: int = 0
    objects: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


def _fail(what: str, message: str) -> IntegrityError:
    return IntegrityError(f"{what}: {message}", what)


class _ObjectChecker:
    """Fetches and checks objects on a few threads, each distinct object once."""

    def __init__(self, source: Source, workers: int) -> None:
        self.source = source
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rcds-verify")
        self.seen: dict[tuple[ContentHash, ObjectKind], int] = {}
        self.futures: list[cf.Future[None]] = []
        self.lock = threading.Lock()
        self.bytes = 0

    def check(self, h: ContentHash, kind: ObjectKind, size: int, compressed: bool, where: str) -> None:
        key = (h, kind)
        with self.lock:
            if key in self.seen:
                if self.seen[key] != size:
                    raise _fail(
                        where, f"object {h.object_name(kind)} is used with sizes {self.seen[key]} and {size}"
                    )
                return
            self.seen[key] = size

        def run() -> None:
            try:
                data = self.source.object(h, kind, size=size, compressed=compressed)
            except IntegrityError as exc:
                raise _fail(where, str(exc)) from None
            except NotFoundError:
                raise _fail(where, f"object {h.object_name(kind)} is missing") from None
            with self.lock:
                self.bytes += len(data)

        self.futures.append(self.pool.submit(run))
        if len(self.futures) > 256:
            self.drain()

    def drain(self) -> None:
        futures, self.futures = self.futures, []
        for f in futures:
            f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def verify_repository(
    source: Source,
    fqrn: str,
    master_keys: Sequence[rsa.RSAPublicKey],
    *,
    now: dt.datetime | None = None,
    workers: int = 8,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Verify the signature chain, then every catalog and every object reachable from the root."""
    trust = establish_trust(source, fqrn, master_keys, now=now)
    report = VerifyReport(revision=trust.manifest.revision)
    checker = _ObjectChecker(source, workers)
    try:
        with RepositoryView(source, trust) as view:
            root = view.root_catalog()
            if root.revision != trust.manifest.revision:
                raise _fail(
                    "root catalog",
                    f"revision {root.revision} differs from manifest revision {trust.manifest.revision}",
                )
            if root.last_modified > trust.manifest.timestamp:
                raise _fail(".cvmfspublished", "timestamp T is older than the root catalog's last_modified")
            _check_catalog(view, root, None, report, checker, progress)
            checker.drain()
    finally:
        checker.close()
    report.objects = len(checker.seen)
    report.bytes = checker.bytes
    return report


def _check_catalog(
    view: RepositoryView,
    cat: Catalog,
    parent_row: Dirent | None,
    report: VerifyReport,
    checker: _ObjectChecker,
    progress: Callable[[str], None] | None,
) -> Tally:
    """Check one catalog and (recursively) its nested ones; return its total counters."""
    where = cat.what
    if progress:
        progress(cat.mountpoint or "/")
    report.catalogs += 1
    if cat.properties.get("schema") != SCHEMA:
        raise _fail(where, f"schema {cat.properties.get('schema')!r}, expected {SCHEMA}")
    prefix = cat.properties.get("root_prefix", "")
    if prefix != cat.mountpoint:
        raise _fail(where, f"root_prefix {prefix!r}, expected {cat.mountpoint!r}")
    counters = cat.counters()
    root_row = cat.lookup(cat.mountpoint)
    if root_row is None or not root_row.is_dir:
        raise _fail(where, f"no directory row for its root {cat.mountpoint or '/'}")
    if parent_row is not None and (not root_row.is_nested_root or not parent_row.is_nested_mountpoint):
        raise _fail(cat.mountpoint, "nested catalog mount point flags are missing (parent 2 / child 32)")

    # Walk the tree of rows from the root row; every row must be reached exactly once.
    reached = 1
    nested_links = {m: (h, s) for m, h, s in cat.nested()}
    seen_mounts: set[str] = set()
    subtree = Tally()
    stack = [root_row]
    while stack:
        d = stack.pop()
        children = (
            cat.listdir(d.path)
            if d.is_dir and not (d.is_nested_mountpoint and d.path != cat.mountpoint)
            else []
        )
        if d.is_dir:
            subdirs = sum(1 for c in children if c.is_dir)
            if not d.is_nested_mountpoint and d.link_count != 2 + subdirs:
                raise _fail(d.path or "/", f"directory link count {d.link_count}, expected {2 + subdirs}")
        for c in children:
            reached += 1
            _check_entry(cat, c, checker)
            if c.is_nested_mountpoint:
                if c.path not in nested_links:
                    raise _fail(c.path, "marked as a nested mount point but missing from nested_catalogs")
                seen_mounts.add(c.path)
                h, size = nested_links[c.path]
                try:
                    child = view.catalog(h, c.path, size)
                except NotFoundError:
                    raise _fail(
                        c.path, f"nested catalog {h.object_name(ObjectKind.CATALOG)} is missing"
                    ) from None
                subtree = subtree + _check_catalog(view, child, c, report, checker, progress)
            elif c.is_dir:
                stack.append(c)
    total_rows = cat.count_rows()
    if reached != total_rows:
        raise _fail(where, f"{total_rows - reached} row(s) are not reachable from the catalog root (orphans)")
    report.entries += reached
    missing = set(nested_links) - seen_mounts
    if missing:
        raise _fail(sorted(missing)[0], "listed in nested_catalogs but has no mount point row")
    own = cat.recount_self()
    if own != counters.self:
        raise _fail(
            where, f"self counters {dict(counters.self.values)} differ from the rows {dict(own.values)}"
        )
    if subtree != counters.subtree:
        raise _fail(
            where,
            f"subtree counters {dict(counters.subtree.values)} differ from the nested catalogs "
            f"{dict(subtree.values)}",
        )
    return counters.total()


def _check_entry(cat: Catalog, d: Dirent, checker: _ObjectChecker) -> None:
    if d.is_symlink and d.size != len(d.symlink.encode("utf-8", "surrogateescape")):
        raise _fail(d.path, f"symlink size {d.size} differs from its target length")
    if not d.is_regular or d.is_external:
        return
    if d.is_chunked:
        chunks = cat.chunks(d)
        offset = 0
        for c in chunks:
            if c.offset != offset:
                raise _fail(d.path, f"chunk at offset {c.offset}, expected {offset} (gap or overlap)")
            checker.check(c.hash, ObjectKind.PARTIAL, c.size, d.compressed, d.path)
            offset += c.size
        if offset != d.size:
            raise _fail(d.path, f"chunks cover {offset} bytes, the file has {d.size}")
    elif d.hash is not None:
        checker.check(d.hash, ObjectKind.FILE, d.size, d.compressed, d.path)
    else:
        raise _fail(d.path, "regular file without content hash")
