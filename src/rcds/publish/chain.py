"""The catalogs from the root down to a changed directory, rewritten bottom-up as a new revision."""

from __future__ import annotations

import itertools
import stat
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import InputError
from rcds.format.catalog_schema import Counters, Tally
from rcds.format.compression import make_object, verify_object
from rcds.format.deflaters import Compress
from rcds.format.dirent import FLAG_DIR, Dirent
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.format.pathhash import parent_path
from rcds.publish.catalog_rw import WritableCatalog
from rcds.repo.catalog import Catalog
from rcds.storage.base import Store

_seq = itertools.count()


@dataclass
class Link:
    """One catalog of the chain with what it was before the change."""

    mountpoint: str
    old_hash: ContentHash
    old_counters: Counters
    catalog: WritableCatalog
    subtree: Tally


def load_catalog_file(store: Store, work: Path, h: ContentHash, size: int | None) -> Path:
    """Copy a stored catalog, verified and decompressed, into a scratch file."""
    name = h.object_name(ObjectKind.CATALOG)
    content = verify_object(store.get(name), h, size=size or None, what=name)
    path = work / f"cat-{next(_seq)}-{h.digest.hex()}.db"
    path.write_bytes(content)
    return path


def read_stats(store: Store, work: Path, h: ContentHash, mountpoint: str) -> tuple[Counters, int]:
    """The statistics and revision of a stored catalog (to replace or drop a nested catalog)."""
    path = load_catalog_file(store, work, h, None)
    try:
        with Catalog(path, mountpoint) as cat:
            return cat.counters(), cat.revision
    finally:
        path.unlink(missing_ok=True)


class CatalogChain:
    """Open for writing every catalog whose mount point lies strictly above ``path``."""

    def __init__(
        self,
        store: Store,
        work: Path,
        algorithm: Algorithm,
        root: ContentHash,
        root_size: int,
        path: str,
        compress: Compress | None = None,
    ) -> None:
        """``compress``: the repository's compressor for the rewritten catalogs (default zlib 6)."""
        self.store = store
        self.compress = compress
        self.work = work
        self.algorithm = algorithm
        self.links: list[Link] = []
        h, size, mount = root, root_size, ""
        while True:
            cat = WritableCatalog.from_file(load_catalog_file(store, work, h, size), mount)
            counters = cat.counters()
            self.links.append(Link(mount, h, counters, cat, counters.subtree))
            below = None
            prefix = mount
            for part in path[len(mount) :].split("/")[1:-1]:
                prefix = f"{prefix}/{part}"
                below = cat.find_nested(prefix)
                if below is not None:
                    break
            if below is None:
                return
            mount, h, size = below

    @property
    def deepest(self) -> Link:
        """The catalog that holds (or will hold) the row of ``path``."""
        return self.links[-1]

    def holds(self, path: str) -> bool:
        """True if the row of ``path`` lives in the deepest catalog of this chain."""
        mount = self.deepest.mountpoint
        if not path.startswith(mount + "/"):
            return False
        cat = self.deepest.catalog
        prefix = mount
        for part in path[len(mount) :].split("/")[1:-1]:
            prefix = f"{prefix}/{part}"
            if cat.find_nested(prefix) is not None:
                return False
        return True

    def add_subtree(self, delta: Tally) -> None:
        """Account for a nested catalog added below the deepest catalog (or removed: negative delta)."""
        self.deepest.subtree = self.deepest.subtree + delta

    def drop_subtree(self, path: str) -> Dirent:
        """Remove ``path`` (and its subtree) from the deepest catalog, keeping counters right."""
        link = self.deepest
        entry = link.catalog.lookup(path)
        if entry is None:
            raise InputError(f"{path} does not exist in the repository", path)
        for mount, h, _size in link.catalog.delete_subtree(path):
            self.add_subtree(Tally() - read_stats(self.store, self.work, h, mount)[0].total())
        return entry

    def ensure_directory(self, path: str, now: int) -> None:
        """Create missing parent directories of a new entry in the deepest catalog."""
        cat = self.deepest.catalog
        missing: list[str] = []
        p = path
        while p != self.deepest.mountpoint:
            entry = cat.lookup(p)
            if entry is not None:
                if not entry.is_dir:
                    raise InputError(f"{p} exists and is not a directory", p)
                break
            missing.append(p)
            p = parent_path(p)
        for d in reversed(missing):
            cat.insert(Dirent(d, d.rsplit("/", 1)[1], stat.S_IFDIR | 0o755, 4096, now, FLAG_DIR))

    def touch(self, path: str, now: int) -> None:
        """Set a directory's mtime (a changed directory, as stock does)."""
        cat = self.deepest.catalog
        entry = cat.lookup(path)
        if entry is not None:
            entry.mtime = now
            entry.mtimens = None
            cat.update(entry)

    def commit(self, now: int, ttl: int) -> tuple[ContentHash, int, int]:
        """Finalize and store every catalog bottom-up; return the new root hash, size and revision."""
        child: tuple[str, ContentHash, int, Dirent] | None = None
        delta = Tally()
        for link in reversed(self.links):
            cat = link.catalog
            if child is not None:
                mount, h, size, child_root = child
                cat.set_nested(mount, h, size)
                cat.update(cat.mount_row(child_root))
            cat.fix_directory_links()
            if not link.mountpoint:
                cat.set_property("TTL", str(ttl))
            root_row = cat.lookup(link.mountpoint)
            assert root_row is not None
            counters = cat.finalize(
                revision=int(cat.properties.get("revision", "0")) + 1,
                previous=link.old_hash,
                last_modified=now,
                subtree=link.subtree + delta,
            )
            content = cat.path.read_bytes()
            obj = make_object(content, self.algorithm, self.compress)
            self.store.put_if_absent(obj.hash.object_name(ObjectKind.CATALOG), obj.data)
            cat.path.unlink(missing_ok=True)
            delta = counters.total() - link.old_counters.total()
            child = (link.mountpoint, obj.hash, len(content), root_row)
        assert child is not None
        root_revision = int(self.links[0].catalog.properties["revision"])
        return child[1], child[2], root_revision

    def abort(self) -> None:
        """Throw away all uncommitted changes."""
        for link in self.links:
            link.catalog.abort()
            link.catalog.path.unlink(missing_ok=True)
