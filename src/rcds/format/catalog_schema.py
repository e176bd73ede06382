"""File catalog (SQLite) schema 2.5 revision 7: statements, properties and statistics counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from rcds.record import SlotRecord

SCHEMA = "2.5"
SCHEMA_REVISION = 7

CREATE_STATEMENTS: tuple[str, ...] = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, "
    "hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, "
    "flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,  "
    "CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  "
    "hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  "
    "FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2));",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));",
)

INDEX_STATEMENTS: tuple[str, ...] = tuple(s for s in CREATE_STATEMENTS if s.startswith("CREATE INDEX"))
"""The statements of :data:`CREATE_STATEMENTS` that create an index (a writer may run them last)."""

INDEX_NAMES: tuple[str, ...] = tuple(s.split()[2] for s in INDEX_STATEMENTS)
"""The names of those indexes, in the same order."""

SCHEMA_OBJECTS = (
    ("table", "properties"),
    ("table", "catalog"),
    ("index", "idx_catalog_parent"),
    ("table", "chunks"),
    ("table", "nested_catalogs"),
    ("table", "bind_mountpoints"),
    ("table", "statistics"),
)

COUNTER_FIELDS: tuple[str, ...] = (
    "regular",
    "symlink",
    "special",
    "dir",
    "nested",
    "chunked",
    "chunks",
    "file_size",
    "chunked_size",
    "xattr",
    "external",
    "external_file_size",
)
"""The twelve counter names; each exists as ``self_<name>`` and ``subtree_<name>``."""

COUNTER_NAMES: tuple[str, ...] = tuple(f"{p}_{f}" for p in ("self", "subtree") for f in COUNTER_FIELDS)


class Tally(SlotRecord):
    """One set of the twelve counters (a catalog's ``self`` or ``subtree`` part).

    ``Tally()`` has every counter at zero (in a new dict of its own); ``+``/``-`` add and subtract
    counter by counter, ``tally[name]`` is one counter.
    """

    __slots__ = ("values",)

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        self.values: Mapping[str, int] = dict.fromkeys(COUNTER_FIELDS, 0) if values is None else values

    def __add__(self, other: Tally) -> Tally:
        return Tally({f: self.values[f] + other.values[f] for f in COUNTER_FIELDS})

    def __sub__(self, other: Tally) -> Tally:
        return Tally({f: self.values[f] - other.values[f] for f in COUNTER_FIELDS})

    def __getitem__(self, name: str) -> int:
        return self.values[name]


class _CountersFields(NamedTuple):
    self: Tally
    subtree: Tally


class Counters(_CountersFields):
    """A catalog's statistics: its own rows and the sum over its nested catalogs.

    A missing part is a new all-zero :class:`Tally`.
    """

    __slots__ = ()

    def __new__(cls, self: Tally | None = None, subtree: Tally | None = None) -> Counters:
        """The counters of a directory itself and of its subtree (zero where not given)."""
        return tuple.__new__(
            cls, (Tally() if self is None else self, Tally() if subtree is None else subtree)
        )

    def total(self) -> Tally:
        """What this catalog contributes to its parent's ``subtree`` counters."""
        return self.self + self.subtree

    def rows(self) -> list[tuple[str, int]]:
        """(counter, value) rows for the ``statistics`` table, all 24."""
        return [(f"self_{f}", self.self.values[f]) for f in COUNTER_FIELDS] + [
            (f"subtree_{f}", self.subtree.values[f]) for f in COUNTER_FIELDS
        ]

    @classmethod
    def from_rows(cls, rows: Mapping[str, int]) -> Counters:
        """Build from a ``statistics`` table; missing counters raise KeyError."""
        return cls(
            Tally({f: int(rows[f"self_{f}"]) for f in COUNTER_FIELDS}),
            Tally({f: int(rows[f"subtree_{f}"]) for f in COUNTER_FIELDS}),
        )


SELF_COUNTERS_SQL = """
SELECT
  SUM(CASE WHEN (mode & 61440) = 32768 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (mode & 61440) = 40960 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (flags & 16) = 16 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (mode & 61440) = 16384 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (mode & 61440) = 32768 AND (flags & 64) = 64 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (mode & 61440) = 32768 THEN size ELSE 0 END),
  SUM(CASE WHEN (mode & 61440) = 32768 AND (flags & 64) = 64 THEN size ELSE 0 END),
  SUM(CASE WHEN xattr IS NOT NULL THEN 1 ELSE 0 END),
  SUM(CASE WHEN (flags & 128) = 128 THEN 1 ELSE 0 END),
  SUM(CASE WHEN (flags & 128) = 128 THEN size ELSE 0 END)
FROM catalog
"""
"""Computes the ``self`` counters that come from ``catalog`` rows (nested and chunks are counted apart)."""
