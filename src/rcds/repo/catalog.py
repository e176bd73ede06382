"""Reading one file catalog: an SQLite database (schema 2.5) decompressed to a local file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from rcds.errors import IntegrityError
from rcds.format.catalog_schema import COUNTER_NAMES, SCHEMA_OBJECTS, SELF_COUNTERS_SQL, Counters, Tally
from rcds.format.dirent import Chunk, Dirent
from rcds.format.hashes import Algorithm, ContentHash
from rcds.format.pathhash import md5_pair

_COLUMNS = "hash, hardlinks, size, mode, mtime, flags, name, symlink, uid, gid, xattr, md5path_1, md5path_2"


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
    def _row(self, row: tuple[object, ...], path: str) -> Dirent:
        raw_hash, hardlinks, size, mode, mtime, flags, name, symlink, uid, gid, xattr = row[:11]
        flags_i = int(flags)  # type: ignore[call-overload]
        h = None
        if raw_hash:
            algo = Algorithm.from_flag_value((flags_i >> 8) & 7)
            if not isinstance(raw_hash, bytes) or len(raw_hash) != 20:
                raise IntegrityError(f"{self.what}: {path or '/'} has a malformed hash column", path)
            h = ContentHash(algo, raw_hash)
        return Dirent(
            path=path,
            name=str(name),
            mode=int(mode),  # type: ignore[call-overload]
            size=int(size),  # type: ignore[call-overload]
            mtime=int(mtime),  # type: ignore[call-overload]
            flags=flags_i,
            hardlinks=int(hardlinks),  # type: ignore[call-overload]
            hash=h,
            symlink=str(symlink),
            uid=int(uid),  # type: ignore[call-overload]
            gid=int(gid),  # type: ignore[call-overload]
            mtimens=int(row[13]) if len(row) > 13 and row[13] is not None else None,  # type: ignore[call-overload]
            xattr=xattr if isinstance(xattr, bytes) else None,
        )

    def _cols(self) -> str:
        return _COLUMNS + (", mtimens" if self._mtimens else "")

    def lookup(self, path: str) -> Dirent | None:
        """The row for ``path`` in this catalog, or None."""
        a, b = md5_pair(path)
        row = self.db.execute(
            f"SELECT {self._cols()} FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?", (a, b)
        ).fetchone()
        return None if row is None else self._row(row, path)

    def listdir(self, path: str) -> list[Dirent]:
        """Rows whose parent is ``path`` (hidden rows included), sorted by name."""
        a, b = md5_pair(path)
        rows = self.db.execute(
            f"SELECT {self._cols()} FROM catalog WHERE parent_1 = ? AND parent_2 = ?", (a, b)
        ).fetchall()
        out = []
        for r in rows:
            child = f"{path}/{r[6]}"
            if md5_pair(child) != (r[11], r[12]):
                raise IntegrityError(f"{self.what}: row {child} is stored under the wrong path hash", child)
            out.append(self._row(r, child))
        out.sort(key=lambda d: d.name.encode("utf-8", "surrogateescape"))
        return out

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

    def iter_entries(self) -> Iterator[tuple[Dirent, tuple[int, int], tuple[int, int]]]:
        """Every row with its own and its parent's path hash (names only; paths are rebuilt by walkers)."""
        for row in self.db.execute(f"SELECT {self._cols()}, parent_1, parent_2 FROM catalog"):
            d = self._row(row, "")
            n = len(row)
            yield d, (int(row[11]), int(row[12])), (int(row[n - 2]), int(row[n - 1]))

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
