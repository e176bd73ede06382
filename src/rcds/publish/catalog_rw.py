"""Writing one file catalog: rows, chunks, nested-catalog links, properties and counters."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from rcds.errors import IntegrityError
from rcds.format.catalog_schema import (
    CREATE_STATEMENTS,
    INDEX_NAMES,
    INDEX_STATEMENTS,
    SCHEMA,
    SCHEMA_REVISION,
    Counters,
    Tally,
)
from rcds.format.dirent import FLAG_NESTED_MOUNTPOINT, FLAG_NESTED_ROOT, Chunk, Dirent
from rcds.format.hashes import ContentHash
from rcds.format.pathhash import PathHash, md5_pair, parent_pair
from rcds.repo.catalog import Catalog

_DIR_LINKS_SQL = """
UPDATE catalog SET hardlinks = 2 + (
  SELECT COUNT(*) FROM catalog AS c WHERE c.parent_1 = catalog.md5path_1 AND c.parent_2 = catalog.md5path_2
  AND (c.mode & 61440) = 16384)
WHERE (mode & 61440) = 16384 AND (flags & 2) = 0
"""

INSERT_ROW = (
    "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, "
    "mtime, mtimens, flags, name, symlink, uid, gid, xattr) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
"""Any row: the values of :func:`row_values`."""

INSERT_FILE_ROW = (
    "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hash, size, mode, mtime, mtimens, "
    "flags, name, uid, gid, hardlinks, symlink, xattr) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,1,'',NULL)"
)
"""A regular file row with one link, no symlink target and no xattrs (what nearly every row of an
ingest is): 13 values, in the order of :data:`FILE_ROW_FIELDS`; the other three are constants of
the statement, so they are not bound per row."""

FILE_ROW_FIELDS = (
    "md5path_1",
    "md5path_2",
    "parent_1",
    "parent_2",
    "hash",
    "size",
    "mode",
    "mtime",
    "mtimens",
    "flags",
    "name",
    "uid",
    "gid",
)
"""The values of an :data:`INSERT_FILE_ROW` row, in order."""


def row_values(d: Dirent, parent: PathHash) -> tuple[object, ...]:
    """The 16 values of :data:`INSERT_ROW` for ``d``, whose parent's path hash is ``parent``."""
    a, b = md5_pair(d.path)
    return (
        a, b, parent[0], parent[1], d.hardlinks, d.hash.digest if d.hash else None, d.size, d.mode,
        d.mtime, d.mtimens, d.flags, d.name, d.symlink, d.uid, d.gid, d.xattr,
    )  # fmt: skip


class WritableCatalog(Catalog):
    """A catalog file opened for writing (rollback journal, never WAL, as clients require)."""

    def __init__(self, path: Path, mountpoint: str) -> None:
        self.path = path
        self.mountpoint = mountpoint
        self.what = f"catalog {mountpoint or '/'}"
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = DELETE")
        self.db.execute("PRAGMA synchronous = OFF")  # the file is only a scratch copy until stored
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("BEGIN")
        self._mtimens = True
        self.properties = dict(self.db.execute("SELECT key, value FROM properties").fetchall())

    @classmethod
    def create(cls, path: Path, root: Dirent) -> WritableCatalog:
        """A new catalog whose root row is ``root`` (its path is the mount point)."""
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("BEGIN")
        for stmt in CREATE_STATEMENTS:
            if stmt not in INDEX_STATEMENTS:  # built once the rows are in (see build_indexes)
                db.execute(stmt)
        props = [("schema", SCHEMA), ("schema_revision", str(SCHEMA_REVISION))]
        if root.path:
            props.append(("root_prefix", root.path))
        db.executemany("INSERT INTO properties (key, value) VALUES (?, ?)", props)
        db.executemany("INSERT INTO statistics (counter, value) VALUES (?, ?)", Counters().rows())
        db.execute("COMMIT")
        db.close()
        cat = cls(path, root.path)
        cat.insert(root)
        return cat

    @classmethod
    def from_file(cls, path: Path, mountpoint: str) -> WritableCatalog:
        """Open an existing catalog file (a decompressed copy) for changes."""
        cat = cls(path, mountpoint)
        if cat.properties.get("schema") != SCHEMA:
            raise IntegrityError(
                f"{cat.what} has schema {cat.properties.get('schema')}, not {SCHEMA}", cat.what
            )
        if int(cat.properties.get("schema_revision", "0")) < SCHEMA_REVISION:
            cat._upgrade()
        return cat

    def _upgrade(self) -> None:
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(catalog)")}
        if "mtimens" not in cols:
            self.db.execute("ALTER TABLE catalog ADD COLUMN mtimens INTEGER")
        self.set_property("schema_revision", str(SCHEMA_REVISION))

    # -- rows -------------------------------------------------------------------------
    def insert(self, d: Dirent) -> None:
        """Add a row (its path hash and parent hash are derived from ``d.path``)."""
        self.db.execute(INSERT_ROW, row_values(d, parent_pair(d.path)))

    def insert_rows(self, sql: str, values: Sequence[Sequence[object]], paths: Sequence[str]) -> str | None:
        """Add rows in one statement; all or nothing. ``sql`` is :data:`INSERT_ROW` (``values`` from
        :func:`row_values`) or :data:`INSERT_FILE_ROW`; ``paths`` are the rows' paths, in order.
        Return None, or the path of a row that already exists (in the catalog or earlier in
        ``values``), after inserting none of them."""
        self.db.execute("SAVEPOINT insert_rows")
        try:
            self.db.executemany(sql, values)
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK TO insert_rows")
            self.db.execute("RELEASE insert_rows")
            seen: set[tuple[object, object]] = set()
            for path, v in zip(paths, values, strict=True):
                key = (v[0], v[1])
                if key in seen or self.lookup(path) is not None:
                    return path
                seen.add(key)
            raise
        self.db.execute("RELEASE insert_rows")
        return None

    def update(self, d: Dirent) -> None:
        """Rewrite the metadata of an existing row."""
        a, b = md5_pair(d.path)
        self.db.execute(
            "UPDATE catalog SET hardlinks=?, hash=?, size=?, mode=?, mtime=?, mtimens=?, flags=?, symlink=?, "
            "uid=?, gid=?, xattr=? WHERE md5path_1=? AND md5path_2=?",
            (
                d.hardlinks,
                d.hash.digest if d.hash else None,
                d.size,
                d.mode,
                d.mtime,
                d.mtimens,
                d.flags,
                d.symlink,
                d.uid,
                d.gid,
                d.xattr,
                a,
                b,
            ),
        )

    def set_link_count(self, path: str, hardlinks: int) -> None:
        """Set the raw ``hardlinks`` column of a row."""
        a, b = md5_pair(path)
        self.db.execute("UPDATE catalog SET hardlinks=? WHERE md5path_1=? AND md5path_2=?", (hardlinks, a, b))

    def insert_chunks(self, path: str, chunks: Iterable[Chunk]) -> None:
        """Add the chunk rows of a chunked file (after its catalog row)."""
        a, b = md5_pair(path)
        self.db.executemany(
            "INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) VALUES (?,?,?,?,?)",
            [(a, b, c.offset, c.size, c.hash.digest) for c in chunks],
        )

    def delete_subtree(self, path: str) -> list[tuple[str, ContentHash, int]]:
        """Delete ``path`` and everything below it in this catalog; return the nested catalogs dropped."""
        dropped: list[tuple[str, ContentHash, int]] = []
        stack = [path]
        while stack:
            p = stack.pop()
            entry = self.lookup(p)
            if entry is None:
                continue
            if entry.is_dir and not entry.is_nested_mountpoint:
                stack.extend(child.path for child in self.listdir(p))
            if entry.is_nested_mountpoint:
                link = self.find_nested(p)
                if link is not None:
                    dropped.append(link)
                self.db.execute("DELETE FROM nested_catalogs WHERE path = ?", (p,))
            a, b = md5_pair(p)
            self.db.execute("DELETE FROM chunks WHERE md5path_1=? AND md5path_2=?", (a, b))
            self.db.execute("DELETE FROM catalog WHERE md5path_1=? AND md5path_2=?", (a, b))
        return dropped

    def set_nested(self, path: str, h: ContentHash, size: int) -> None:
        """Point the nested catalog link at ``path`` to a catalog object."""
        self.db.execute(
            "INSERT OR REPLACE INTO nested_catalogs (path, sha1, size) VALUES (?,?,?)", (path, h.hex, size)
        )

    def mount_row(self, child_root: Dirent) -> Dirent:
        """The parent-side row of a nested catalog root (same metadata, mount-point flag)."""
        flags = (child_root.flags & ~FLAG_NESTED_ROOT) | FLAG_NESTED_MOUNTPOINT
        return child_root.replace(flags=flags)

    def set_property(self, key: str, value: str) -> None:
        """Set a ``properties`` row."""
        self.db.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)", (key, value))
        self.properties[key] = value

    def build_indexes(self) -> None:
        """Create the schema's indexes if missing. A new catalog gets them only now: one sort of
        the finished rows costs less than keeping the index in order through every insert."""
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name, stmt in zip(INDEX_NAMES, INDEX_STATEMENTS, strict=True):
            if name not in names:
                self.db.execute(stmt)

    def fix_directory_links(self) -> None:
        """Set every directory's link count to 2 + its subdirectories (mount points keep their child's)."""
        self.build_indexes()  # the update looks up each directory's children by parent
        self.db.execute(_DIR_LINKS_SQL)

    def finalize(
        self, *, revision: int, previous: ContentHash | None, last_modified: int, subtree: Tally
    ) -> Counters:
        """Write counters and properties, commit and close; the file is then ready to compress."""
        self.build_indexes()
        counters = Counters(self.recount_self(), subtree)
        self.db.executemany(
            "INSERT OR REPLACE INTO statistics (counter, value) VALUES (?, ?)", counters.rows()
        )
        self.set_property("revision", str(revision))
        self.set_property("last_modified", str(last_modified))
        if previous is not None:
            self.set_property("previous_revision", previous.hex)
        self.db.execute("COMMIT")
        self.db.execute("VACUUM")
        self.db.close()
        return counters

    def abort(self) -> None:
        """Drop uncommitted changes and close."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")
        self.db.close()
