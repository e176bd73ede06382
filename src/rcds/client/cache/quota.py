"""The LRU bookkeeping of the local cache: a private SQLite database ``cachedb``.

One row per cached object: its name (``ab/<38 hex><algo id><suffix>``), plain size, access
sequence number (higher = more recently used), kind suffix and pinned flag, plus a running
``total`` in ``properties`` so inserts need not sum the table. The database is advisory: the
object files are the truth, and the cache rebuilds the table from the directory tree when the
database is missing, corrupt or from another schema.

Several processes share the database: WAL journal, a busy timeout, explicit ``BEGIN IMMEDIATE``
transactions for every multi-statement update, and single-statement (atomic) access touches.
Inside one process a lock serialises use of the one connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from rcds.errors import IntegrityError, StorageError
from rcds.format.hashes import parse_object_name

SCHEMA = "rcds-cachedb-1"

_CREATE = """
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, acseq INTEGER NOT NULL,
    kind TEXT NOT NULL, pinned INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS idx_objects_acseq ON objects (acseq);
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Entry(NamedTuple):
    """One row of the database."""

    name: str
    size: int
    acseq: int
    kind: str
    pinned: bool


SUBDIRS = [f"{i:02x}" for i in range(256)]


def scan_tree(directory: Path) -> list[Entry]:
    """Entries for the object files under ``directory/00..ff``, oldest access first, unpinned."""
    found: list[tuple[int, str, int, str]] = []
    for sub in SUBDIRS:
        with suppress(FileNotFoundError), os.scandir(directory / sub) as it:
            for e in it:
                try:
                    _, kind = parse_object_name(f"data/{sub}/{e.name}")
                    st = e.stat()
                except (IntegrityError, FileNotFoundError):
                    continue  # not an object name (or just evicted)
                atime = max(st.st_atime_ns, st.st_mtime_ns)
                found.append((atime, f"{sub}/{e.name}", st.st_size, kind.value))
    found.sort()
    return [Entry(name, size, i + 1, kind, False) for i, (_, name, size, kind) in enumerate(found)]


def compare(rows: Iterable[Entry], files: Iterable[Entry], total: int) -> list[str]:
    """Differences between database rows, scanned files and the recorded total."""
    r = {e.name: e for e in rows}
    f = {e.name: e for e in files}
    problems = [f"missing file for row {n}" for n in sorted(r.keys() - f.keys())]
    problems += [f"no row for file {n}" for n in sorted(f.keys() - r.keys())]
    problems += [
        f"size of {n}: row {r[n].size}, file {f[n].size}"
        for n in sorted(r.keys() & f.keys())
        if r[n].size != f[n].size
    ]
    if total != sum(e.size for e in r.values()):
        problems.append(f"recorded total {total} != sum of rows {sum(e.size for e in r.values())}")
    return problems


class QuotaDB:
    """Access to ``cachedb``; all methods are safe across threads and processes.

    Construct with :meth:`open_or_recreate`; the constructor raises raw :mod:`sqlite3` errors.
    """

    @classmethod
    def open_or_recreate(cls, path: Path, busy_timeout: float = 30.0) -> tuple[QuotaDB, bool]:
        """Open ``path``; a corrupt database is deleted and created afresh.

        Returns the database and whether it needs a rebuild (new, recreated or another schema).
        The caller must hold the cache lock, since other processes' connections break on recreate.
        """
        db: QuotaDB | None = None
        try:
            db = cls(path, busy_timeout)
            schema = db.schema()
            if schema is not None and db._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            return db, schema != SCHEMA
        except sqlite3.OperationalError as exc:  # cannot open, locked, I/O: not a corrupt file
            if db is not None:
                db.close()
            raise StorageError(f"cannot open cache database {path}: {exc}") from exc
        except sqlite3.DatabaseError:  # not a database, malformed: start afresh
            if db is not None:
                db.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        try:
            db = cls(path, busy_timeout)
            db.schema()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot create cache database {path}: {exc}") from exc
        return db, True

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def schema(self) -> str | None:
        """The schema property, ``None`` for a new or foreign database.

        Raises :class:`sqlite3.DatabaseError` if the file is not a usable database.
        """
        with self._lock:
            self._db.executescript(_CREATE)
            row = self._db.execute("SELECT value FROM properties WHERE key='schema'").fetchone()
            return None if row is None else str(row[0])

    @contextmanager
    def transaction(self) -> Iterator[QuotaDB]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on exception), holding the thread lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def replace_all(self, entries: Iterable[Entry]) -> None:
        """Inside a transaction: make the table hold exactly ``entries`` (a rebuild)."""
        self._db.execute("DELETE FROM objects")
        self._db.executemany(
            "INSERT OR REPLACE INTO objects (name, size, acseq, kind, pinned) VALUES (?, ?, ?, ?, ?)",
            ((e.name, e.size, e.acseq, e.kind, int(e.pinned)) for e in entries),
        )
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM objects").fetchone()[0]
        self._set_total(int(total))
        self._db.execute("INSERT OR REPLACE INTO properties VALUES ('schema', ?)", (SCHEMA,))

    def _set_total(self, total: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO properties VALUES ('total', ?)", (str(total),))

    def total(self) -> int:
        """Bytes of all recorded objects."""
        with self._lock:
            row = self._db.execute("SELECT value FROM properties WHERE key='total'").fetchone()
            return int(row[0]) if row else 0

    def pinned_total(self) -> int:
        """Bytes of pinned objects."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM objects WHERE pinned != 0").fetchone()
            return int(row[0])

    def get(self, name: str) -> Entry | None:
        """The row of ``name``."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, size, acseq, kind, pinned FROM objects WHERE name=?", (name,)
            ).fetchone()
        return None if row is None else Entry(row[0], row[1], row[2], row[3], bool(row[4]))

    def entries(self) -> list[Entry]:
        """All rows, least recently used first."""
        with self._lock:
            rows = self._db.execute("SELECT name, size, acseq, kind, pinned FROM objects ORDER BY acseq")
            return [Entry(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def touch(self, name: str) -> bool:
        """Mark ``name`` most recently used (one atomic statement); False if it has no row."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE objects SET acseq=(SELECT COALESCE(MAX(acseq), 0) + 1 FROM objects) WHERE name=?",
                (name,),
            )
            return cur.rowcount > 0

    def touch_many(self, names: Sequence[str]) -> None:
        """Inside a transaction: mark ``names`` most recently used, in order (unknown names are ignored)."""
        base = int(self._db.execute("SELECT COALESCE(MAX(acseq), 0) FROM objects").fetchone()[0])
        self._db.executemany(
            "UPDATE objects SET acseq=? WHERE name=?", ((base + i + 1, n) for i, n in enumerate(names))
        )

    def upsert(self, name: str, size: int, kind: str, pinned: bool = False) -> None:
        """Inside a transaction: record ``name`` as most recently used (keeping an existing pin)."""
        old = self._db.execute("SELECT size, pinned FROM objects WHERE name=?", (name,)).fetchone()
        seq = self._db.execute("SELECT COALESCE(MAX(acseq), 0) + 1 FROM objects").fetchone()[0]
        pin = int(pinned or (old is not None and old[1] != 0))
        self._db.execute(
            "INSERT OR REPLACE INTO objects (name, size, acseq, kind, pinned) VALUES (?, ?, ?, ?, ?)",
            (name, size, seq, kind, pin),
        )
        self._set_total(self.total() + size - (old[0] if old else 0))

    def upsert_many(self, items: Sequence[tuple[str, int, str]]) -> None:
        """Inside a transaction: record ``(name, size, kind)`` rows as most recently used, in order.

        Like :meth:`upsert` for each item (existing pins are kept), in a few statements.
        """
        latest = {name: (size, kind) for name, size, kind in items}
        names = list(latest)
        old: dict[str, tuple[int, int]] = {}
        for i in range(0, len(names), 500):
            part = names[i : i + 500]
            rows = self._db.execute(
                f"SELECT name, size, pinned FROM objects WHERE name IN ({','.join('?' * len(part))})", part
            )
            old.update((str(n), (int(sz), int(p))) for n, sz, p in rows)
        base = int(self._db.execute("SELECT COALESCE(MAX(acseq), 0) FROM objects").fetchone()[0])
        self._db.executemany(
            "INSERT OR REPLACE INTO objects (name, size, acseq, kind, pinned) VALUES (?, ?, ?, ?, ?)",
            (
                (name, size, base + i + 1, kind, int(old.get(name, (0, 0))[1] != 0))
                for i, (name, (size, kind)) in enumerate(latest.items())
            ),
        )
        delta = sum(size for size, _ in latest.values()) - sum(size for size, _ in old.values())
        self._set_total(self.total() + delta)

    def remove(self, name: str) -> int:
        """Inside a transaction: forget ``name``; return the bytes it accounted for."""
        row = self._db.execute("SELECT size FROM objects WHERE name=?", (name,)).fetchone()
        if row is None:
            return 0
        self._db.execute("DELETE FROM objects WHERE name=?", (name,))
        self._set_total(self.total() - int(row[0]))
        return int(row[0])

    def plan_eviction(self, target: int, keep: str | None = None) -> tuple[list[str], int]:
        """Inside a transaction: the least recently used unpinned rows (never ``keep``) whose removal
        brings the total down to ``target`` if possible; returns them and the total left after."""
        current = self.total()
        victims: list[str] = []
        if current <= target:
            return victims, current
        rows = self._db.execute("SELECT name, size FROM objects WHERE pinned=0 ORDER BY acseq")
        for name, size in rows:
            if name != keep:
                victims.append(str(name))
                current -= int(size)
                if current <= target:
                    break
        return victims, current

    def set_pinned(self, name: str, pinned: bool) -> bool:
        """Pin or unpin ``name``; False if it has no row."""
        with self._lock:
            cur = self._db.execute("UPDATE objects SET pinned=? WHERE name=?", (int(pinned), name))
            return cur.rowcount > 0

    def unpin_all(self) -> None:
        """Clear every pin (e.g. when no client process is running any more)."""
        with self._lock:
            self._db.execute("UPDATE objects SET pinned=0")
