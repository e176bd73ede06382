"""Reading the published state of a repository tree (own stratum 0 or replica).

A tree is a local directory or a :class:`~rcds.storage.base.Store` (an S3 bucket prefix). Only
our own storage is read, so the manifest is parsed, not re-verified; every catalog is still
checked against its hash on the way in.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import IntegrityError, NotFoundError
from rcds.format import manifest
from rcds.format.hashes import ContentHash
from rcds.publish.chain import load_catalog_file
from rcds.repo.catalog import Catalog
from rcds.storage.base import Store
from rcds.storage.local import LocalStore

Tree = Path | Store
"""A served tree: a local directory, or the store of an S3-backed repository."""


@dataclass(frozen=True)
class Published:
    """Identity of a published revision: root catalog hash and revision number."""

    root: ContentHash
    root_size: int
    revision: int
    timestamp: int = 0
    """When the revision was signed (Unix seconds; 0 if the manifest does not say)."""


def published(public: Tree) -> Published | None:
    """The current revision of the tree at ``public``, or None if it has none yet."""
    try:
        if isinstance(public, Store):
            raw = public.get(".cvmfspublished")
        else:
            raw = (Path(public) / ".cvmfspublished").read_bytes()
    except (FileNotFoundError, NotFoundError):
        return None
    m = manifest.parse(raw).manifest
    return Published(m.root_catalog, m.root_catalog_size, m.revision, m.timestamp)


@contextlib.contextmanager
def open_catalog(public: Tree, h: ContentHash, mount: str, size: int | None = None) -> Iterator[Catalog]:
    """A catalog of the tree at ``public``, decompressed into a temporary file."""
    store = public if isinstance(public, Store) else LocalStore(Path(public))
    with tempfile.TemporaryDirectory(prefix="rcds-svc-") as tmp:
        path = load_catalog_file(store, Path(tmp), h, size)
        cat = Catalog(path, mount)
        try:
            yield cat
        finally:
            cat.close()


def cid_mounts(
    public: Tree, rev: Published, prefix: str, max_depth: int, totals: dict[str, int] | None = None
) -> dict[str, str]:
    """CID -> mount point of every nested catalog that is a CID under ``/<prefix>``.

    ``totals``, if given, receives the root catalog's whole-tree counters (``file_size``, ...),
    read from the root catalog this walk opens anyway.

    A nested catalog at depth 1..max_depth below the prefix is a CID unless it has nested
    catalogs of its own within that depth (stock layouts make ``/sw/<group>`` a catalog too).
    """
    base = f"/{prefix}/"
    found: dict[str, str] = {}
    todo: list[tuple[ContentHash, str, int]] = [(rev.root, "", rev.root_size)]
    while todo:
        h, mount, size = todo.pop()
        with open_catalog(public, h, mount, size) as cat:
            if mount == "" and totals is not None:
                totals.update(cat.counters().total().values)
            children = [(m, ch, s) for m, ch, s in cat.nested() if m.startswith(base)]
        for m, ch, s in children:
            depth = m[len(base) :].count("/") + 1
            if depth > max_depth:
                continue
            deeper = depth < max_depth and _has_nested(public, ch, m, s)
            if deeper:
                todo.append((ch, m, s))
            else:
                found[m[len(base) :]] = m
    return found


def _has_nested(public: Tree, h: ContentHash, mount: str, size: int) -> bool:
    with open_catalog(public, h, mount, size) as cat:
        return bool(cat.nested())


def nested_hash(public: Tree, rev: Published, mount: str) -> tuple[ContentHash, int] | None:
    """The catalog mounted exactly at ``mount`` (searched from the root), if any."""
    h, size, cur = rev.root, rev.root_size, ""
    while cur != mount:
        with open_catalog(public, h, cur, size) as cat:
            nxt = None
            for m, ch, s in cat.nested():
                if mount == m or mount.startswith(m + "/"):
                    nxt = (m, ch, s)
                    break
        if nxt is None:
            return None
        cur, h, size = nxt
    return h, size


def stamp_times(public: Tree, rev: Published, stamp_prefix: str) -> dict[str, int]:
    """CID -> mtime of its "last used" stamp file under ``/<stamp_prefix>``."""
    mount = f"/{stamp_prefix}"
    link = nested_hash(public, rev, mount)
    if link is None:
        return {}
    out: dict[str, int] = {}
    with open_catalog(public, link[0], mount, link[1]) as cat:
        stack = [mount]
        while stack:
            d = stack.pop()
            for e in cat.listdir(d):
                if e.is_dir:
                    stack.append(e.path)
                elif e.is_regular and e.name != ".cvmfscatalog":
                    out[e.path[len(mount) + 1 :]] = e.mtime
    return out


def catalog_age(public: Tree, rev: Published, mount: str) -> int | None:
    """The ``last_modified`` time of the catalog mounted at ``mount`` (its publish time)."""
    link = nested_hash(public, rev, mount)
    if link is None:
        return None
    try:
        with open_catalog(public, link[0], mount, link[1]) as cat:
            return cat.last_modified
    except (NotFoundError, IntegrityError):
        return None
