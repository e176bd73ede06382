"""Reading one file catalog: an SQLite database (schema 2.5) decompressed to a local file.

Listing is the hot path of the client (``rcds get`` plans a whole tree, warm reads list every
directory), so rows are fetched with exactly the columns a :class:`Dirent` needs, typed by SQL
(``CAST``) and in the order of its fields, and become entries in one tight loop
(:func:`_entries`). :meth:`Catalog.tree` reads a whole catalog with one query, for walks that
cover all of it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any

from rcds.errors import IntegrityError
from rcds.format.catalog_schema import COUNTER_NAMES, SCHEMA_OBJECTS, SELF_COUNTERS_SQL, Counters, Tally
from rcds.format.dirent import ALGORITHM_OF_FLAG_VALUE, Chunk, Dirent, algorithm_of_flags
from rcds.format.hashes import ContentHash
from rcds.format.pathhash import PathHash, md5_pair

try:  # CPython's own MD5 is about twice as fast as OpenSSL's on short inputs (no EVP set-up)
    from _md5 import md5 as _md5  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - a Python built without its own hash modules
    _md5 = hashlib.md5

_INT = "ifnull(CAST({} AS INTEGER), 0)"
_SELECT = (
    "SELECT ifnull(CAST(name AS TEXT), ''), "
    + ", ".join(_INT.format(c) for c in ("mode", "size", "mtime", "flags", "hardlinks"))
    + ", hash, ifnull(CAST(symlink AS TEXT), ''), "
    + ", ".join(_INT.format(c) for c in ("uid", "gid"))
    + ", {mtimens}, CASE WHEN typeof(xattr) = 'blob' THEN xattr END, "
    "md5path_1, md5path_2{parent} FROM catalog"
)
"""A row as :func:`_entries` reads it: the fields of :class:`Dirent` after ``path``, in their
order, then the row's own path hash (and, to group rows, its parent's after that). Typed
as stock reads them: a NULL number is 0, a NULL text is empty (``mtimens`` stays NULL: absent)."""

Row = tuple[Any, ...]
"""One row of :data:`_SELECT`."""

_LEAN = (
    "SELECT ifnull(CAST(name AS TEXT), ''), "
    + ", ".join(_INT.format(c) for c in ("mode", "size", "mtime"))
    + ", {mtimens}, "
    + ", ".join(_INT.format(c) for c in ("flags", "hardlinks"))
    + ", hash, ifnull(CAST(symlink AS TEXT), ''), parent_1, parent_2 FROM catalog WHERE ("
    + _INT.format("flags")
    + " & 32768) = 0{where}"
)
"""A lean row (:meth:`Catalog.lean_tree`, :meth:`Catalog.lean_listdir`): what a copy of a file
needs, typed as in :data:`_SELECT`; hidden rows (flag ``0x8000``) are left out by the query.
Not sorted (an ``ORDER BY`` of the whole catalog costs more than sorting each directory)."""

LeanRow = tuple[str, int, int, int, "int | None", int, int, "bytes | None", str, int, int]
"""``(name, mode, size, mtime, mtimens, flags, hardlinks, hash, symlink, parent_1, parent_2)``:
see :data:`_LEAN`."""

LOOKUP_BATCH = 400
"""Paths per query of :meth:`Catalog.lookup_many` (800 parameters: within every SQLite's limit)."""

BULK_MAX_ROWS = 200_000
"""Larger catalogs are not read whole (:meth:`Catalog.tree`); stock advises at most 200,000
entries per catalog."""

_PAIR = struct.Struct("<qq").unpack
_ALGORITHMS = ALGORITHM_OF_FLAG_VALUE
_BY_NAME = itemgetter(0)
_NEW = tuple.__new__
# ContentHash is a NamedTuple: building the tuple directly skips its validating __new__
# (the digest length is checked here).


def _entries(rows: list[Row], parent: str, what: str) -> list[Dirent]:
    """The entries of ``rows``, the children of directory ``parent``, in name order.

    Names are compared as ``str``: text read from SQLite is valid UTF-8 (no surrogates), for
    which code point order is the byte order of the UTF-8 names, the order stock lists in.
    Every row must be stored under the path hash of ``parent/name``.
    """
    rows.sort(key=_BY_NAME)
    out: list[Dirent] = []
    append = out.append
    for name, mode, size, mtime, flags, hardlinks, raw, symlink, uid, gid, ns, xattr, h1, h2 in rows:
        path = f"{parent}/{name}"
        if _PAIR(_md5(path.encode("utf-8", "surrogateescape")).digest()) != (h1, h2):
            raise IntegrityError(f"{what}: row {path} is stored under the wrong path hash", path)
        h = None
        if raw:
            if type(raw) is not bytes or len(raw) != 20:
                raise IntegrityError(f"{what}: {path} has a malformed hash column", path)
            h = _NEW(ContentHash, (_ALGORITHMS[(flags >> 8) & 7] or algorithm_of_flags(flags), raw))
        append(Dirent(path, name, mode, size, mtime, flags, hardlinks, h, symlink, uid, gid, ns, xattr))
    return out


def _entry(row: Row, path: str, what: str) -> Dirent:
    """The entry of one row found under ``path`` (its path hash is not checked)."""
    name, mode, size, mtime, flags, hardlinks, raw, symlink, uid, gid, ns, xattr = row[:12]
    h = None
    if raw:
        if type(raw) is not bytes or len(raw) != 20:
            raise IntegrityError(f"{what}: {path or '/'} has a malformed hash column", path)
        h = ContentHash(algorithm_of_flags(flags), raw)
    return Dirent(path, name, mode, size, mtime, flags, hardlinks, h, symlink, uid, gid, ns, xattr)


class CatalogTree:
    """All rows of one catalog, read with one query and grouped by their parent directory.

    :meth:`listdir` answers as :meth:`Catalog.listdir` does, without a query: for walks that
    list every directory of the catalog (see :meth:`Catalog.tree`).
    """

    def __init__(self, what: str, groups: dict[PathHash, list[Row]]) -> None:
        self.what = what
        self._groups = groups

    def listdir(self, path: str) -> list[Dirent]:
        """Rows whose parent is ``path`` (hidden rows included), sorted by name."""
        rows = self._groups.get(md5_pair(path))
        return _entries(rows, path, self.what) if rows else []


class Catalog:
    """Read access to one catalog file.

    ``mountpoint`` is the catalog's root path (``""`` for the root catalog). Paths passed
    to the methods are full repository paths.
    """

    def __init__(self, path: Path, mountpoint: str, *, what: str | None = None) -> None:
        self.path = path
        self.mountpoint = mountpoint
        self.what = what or f"catalog {mountpoint or '/'}"
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.db.execute("PRAGMA query_only = ON")
            names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.what} is not a readable SQLite catalog ({exc})", self.what) from None
        missing = [n for _, n in SCHEMA_OBJECTS if n not in names]
        if missing:
            raise IntegrityError(f"{self.what} lacks schema objects: {', '.join(missing)}", self.what)
        self._mtimens = "mtimens" in {r[1] for r in self.db.execute("PRAGMA table_info(catalog)")}
        self.properties = dict(self.db.execute("SELECT key, value FROM properties").fetchall())

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties -------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The catalog's ``revision`` property."""
        return int(self.properties.get("revision", "0"))

    @property
    def ttl(self) -> int:
        """The ``TTL`` property (240 when absent)."""
        return int(self.properties.get("TTL", "240"))

    @property
    def last_modified(self) -> int:
        """The ``last_modified`` property."""
        return int(self.properties.get("last_modified", "0"))

    @property
    def previous_revision(self) -> ContentHash | None:
        """Hash of the catalog this one replaced, if recorded (all-zero means none)."""
        text = self.properties.get("previous_revision")
        if not text:
            return None
        h = ContentHash.parse(text)
        return None if h.is_null() else h

    def counters(self) -> Counters:
        """The 24 statistics counters; IntegrityError if any is missing."""
        rows = dict(self.db.execute("SELECT counter, value FROM statistics").fetchall())
        missing = [c for c in COUNTER_NAMES if c not in rows]
        if missing:
            raise IntegrityError(f"{self.what} lacks statistics counters: {', '.join(missing)}", self.what)
        return Counters.from_rows(rows)

    # -- entries ----------------------------------------------------------------------
    @cached_property
    def _lookup_sql(self) -> str:
        """The query for one row by its path hash."""
        return f"{self._select()} WHERE md5path_1 = ? AND md5path_2 = ?"

    @cached_property
    def _listdir_sql(self) -> str:
        """The query for the rows of one directory, by its path hash."""
        return f"{self._select()} WHERE parent_1 = ? AND parent_2 = ?"

    def _select(self, *, parents: bool = False) -> str:
        """:data:`_SELECT` for this catalog's columns (with the parent hashes if ``parents``)."""
        return _SELECT.format(
            mtimens="CAST(mtimens AS INTEGER)" if self._mtimens else "NULL",
            parent=", parent_1, parent_2" if parents else "",
        )

    def lookup(self, path: str) -> Dirent | None:
        """The row for ``path`` in this catalog, or None."""
        a, b = md5_pair(path)
        row = self.db.execute(self._lookup_sql, (a, b)).fetchone()
        return None if row is None else _entry(row, path, self.what)

    def lookup_many(self, paths: Iterable[str]) -> dict[str, Dirent]:
        """The rows for many paths at once (a query per :data:`LOOKUP_BATCH` paths, each an index
        search); paths without a row in this catalog are left out."""
        by_hash = {md5_pair(p): p for p in paths}
        pairs = list(by_hash)
        found: dict[str, Dirent] = {}
        for start in range(0, len(pairs), LOOKUP_BATCH):
            part = pairs[start : start + LOOKUP_BATCH]
            values = ",".join(["(?,?)"] * len(part))
            sql = (
                f"{self._select()} WHERE (md5path_1, md5path_2) IN "
                f"(SELECT column1, column2 FROM (VALUES {values}))"
            )
            for row in self.db.execute(sql, [x for pair in part for x in pair]):
                path = by_hash[row[12], row[13]]
                found[path] = _entry(row, path, self.what)
        return found

    def listdir(self, path: str) -> list[Dirent]:
        """Rows whose parent is ``path`` (hidden rows included), sorted by name."""
        a, b = md5_pair(path)
        return _entries(self.db.execute(self._listdir_sql, (a, b)).fetchall(), path, self.what)

    def tree(self) -> CatalogTree | None:
        """All rows at once, grouped by directory (one query); None for a very large catalog.

        Worth it when a walk lists every directory of the catalog anyway: one scan of the table
        instead of an index search per directory.
        """
        if self.count_rows() > BULK_MAX_ROWS:
            return None
        groups: defaultdict[PathHash, list[Row]] = defaultdict(list)
        for row in self.db.execute(self._select(parents=True)):
            groups[row[14], row[15]].append(row[:14])
        return CatalogTree(self.what, groups)

    def _lean(self, where: str = "") -> str:
        """:data:`_LEAN` for this catalog's columns."""
        return _LEAN.format(
            mtimens="CAST(mtimens AS INTEGER)" if self._mtimens else "NULL",
            where=where,
        )

    def lean_listdir(self, path: str) -> list[LeanRow]:
        """The visible rows whose parent is ``path``, as lean rows (:data:`LeanRow`), unsorted.

        Unlike :meth:`listdir`, no :class:`Dirent` is made and the rows' own path hashes are not
        checked (the caller checks each name; see :mod:`rcds.client.tree.rows`).
        """
        sql = self._lean(where=" AND parent_1 = ? AND parent_2 = ?")
        return self.db.execute(sql, md5_pair(path)).fetchall()

    def lean_tree(self) -> dict[PathHash, list[LeanRow]] | None:
        """Every visible row as a lean row, grouped by its parent's path hash (one query).

        None for a catalog of more than :data:`BULK_MAX_ROWS` rows (as :meth:`tree`).
        """
        if self.count_rows() > BULK_MAX_ROWS:
            return None
        groups: dict[PathHash, list[LeanRow]] = {}
        get = groups.get
        for row in self.db.execute(self._lean()):
            key = (row[9], row[10])
            group = get(key)
            if group is None:
                groups[key] = [row]
            else:
                group.append(row)
        return groups

    def chunks(self, entry: Dirent) -> list[Chunk]:
        """The chunk list of a chunked file, ordered by offset."""
        a, b = md5_pair(entry.path)
        algo = entry.algorithm
        rows = self.db.execute(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? ORDER BY offset",
            (a, b),
        ).fetchall()
        return [Chunk(int(o), int(s), ContentHash(algo, bytes(h))) for o, s, h in rows]

    def nested(self) -> list[tuple[str, ContentHash, int]]:
        """Direct nested catalogs: (mount point, hash, uncompressed size)."""
        out = []
        for path, sha1, size in self.db.execute("SELECT path, sha1, size FROM nested_catalogs ORDER BY path"):
            try:
                out.append((str(path), ContentHash.parse(str(sha1)), int(size or 0)))
            except IntegrityError:
                raise IntegrityError(
                    f"{self.what}: nested catalog {path} has a bad hash {sha1!r}", str(path)
                ) from None
        return out

    def find_nested(self, path: str) -> tuple[str, ContentHash, int] | None:
        """The nested catalog mounted exactly at ``path``, if any."""
        row = self.db.execute(
            "SELECT sha1, size FROM nested_catalogs WHERE path = ? "
            "UNION ALL SELECT sha1, size FROM bind_mountpoints WHERE path = ?",
            (path, path),
        ).fetchone()
        return None if row is None else (path, ContentHash.parse(str(row[0])), int(row[1] or 0))

    def iter_entries(self) -> Iterator[tuple[Dirent, PathHash, PathHash]]:
        """Every row with its own and its parent's path hash (names only; paths are rebuilt by walkers)."""
        for row in self.db.execute(self._select(parents=True)):
            yield _entry(row, "", self.what), (int(row[12]), int(row[13])), (int(row[14]), int(row[15]))

    def recount_self(self) -> Tally:
        """The ``self_*`` counters recomputed from the rows."""
        row = self.db.execute(SELF_COUNTERS_SQL).fetchone()
        reg, sym, special, dirs, chunked, fsize, csize, xattr, ext, extsize = (int(v or 0) for v in row)
        nested = int(self.db.execute("SELECT COUNT(*) FROM nested_catalogs").fetchone()[0])
        chunks = int(self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
        return Tally(
            {
                "regular": reg,
                "symlink": sym,
                "special": special,
                "dir": dirs,
                "nested": nested,
                "chunked": chunked,
                "chunks": chunks,
                "file_size": fsize,
                "chunked_size": csize,
                "xattr": xattr,
                "external": ext,
                "external_file_size": extsize,
            }
        )

    def count_rows(self) -> int:
        """Number of rows in ``catalog``."""
        return int(self.db.execute("SELECT COUNT(*) FROM catalog").fetchone()[0])
