"""A lean walk of a subtree: each directory's visible rows as plain tuples, for copying it.

:meth:`Mounted.walk <rcds.client.tree.mounted.Mounted.walk>` yields a :class:`Dirent` per entry,
each checked against its own path hash. Copying a whole tree (``rcds get``) needs less: per
directory, the rows of its children with the columns a copy uses (:data:`LeanRow`), read with
one query per catalog (:meth:`Catalog.lean_tree`; a directory at a time for a catalog the walk
covers only a part of, or a very large one). What that leaves out, and why it is safe:

- the rows' own path hashes (``md5path``) are not recomputed: a row is found through its
  parent's path hash, which the walk computes from the path it built (so every directory is
  reached by its real path, at most once). The catalog itself is verified as a whole (its
  content hash, named by the signed manifest or by its parent catalog), so a row stored under
  a wrong path hash is a publisher's mistake, not a way into the copy: the copy writes each row
  where its parent and name put it.
- what the copy does rely on is checked here, per directory: every name is a plain file name
  (not empty, ``.`` or ``..``; no ``/`` or NUL: nothing is written outside the destination) and
  no name appears twice (no entry of the copy can replace another, e.g. a directory by a
  symlink that later writes would follow).

Hidden rows are left out by the query; a nested catalog mount point is replaced by the root row
of the nested catalog (loaded as the walk reaches it), whose rows are then walked, as
:meth:`Mounted.walk` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import itemgetter

from rcds.client.tree.mounted import Located, Mounted
from rcds.errors import IntegrityError
from rcds.format.dirent import FLAG_NESTED_MOUNTPOINT, Dirent, algorithm_of_flags
from rcds.format.hashes import ContentHash
from rcds.format.pathhash import PathHash, md5_pair
from rcds.repo.catalog import Catalog, LeanRow

__all__ = ["Enter", "LeanDir", "lean_dirent", "lean_row", "walk_lean", "walk_rows"]

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_NOT_NAMES = frozenset(("", ".", ".."))
_BY_NAME = itemgetter(0)

LeanDir = tuple[str, Catalog, list[LeanRow]]
"""A directory of the walk: its repository path, its catalog and its children's rows."""

_Groups = dict[PathHash, list[LeanRow]] | None


def lean_row(loc: Located) -> LeanRow:
    """The lean row of an entry found otherwise (e.g. the top of a walk)."""
    e = loc.entry
    raw = e.hash.digest if e.hash is not None else None
    return (e.name, e.mode, e.size, e.mtime, e.mtimens, e.flags, e.hardlinks, raw, e.symlink, 0, 0)


def lean_dirent(path: str, row: LeanRow) -> Dirent:
    """The entry of a lean row found under ``path`` (its hash column checked as catalogs do)."""
    name, mode, size, mtime, ns, flags, hardlinks, raw, symlink, _, _ = row
    h = None
    if raw:
        if type(raw) is not bytes or len(raw) != 20:
            raise IntegrityError(f"{path or '/'} has a malformed hash column", path)
        h = ContentHash(algorithm_of_flags(flags), raw)
    return Dirent(path, name, mode, size, mtime, flags, hardlinks, h, symlink, 0, 0, ns, None)


def walk_rows(m: Mounted, top: Located) -> Iterator[LeanDir]:
    """The directories of the subtree of directory ``top`` (already entered if a nested catalog
    mount point), parents before children, each with its visible children's rows by name.

    Directory rows in a yielded list are final: a nested catalog mount point is already
    replaced by the nested catalog's root row. :class:`IntegrityError` for a name that is not a
    plain file name or appears twice in one directory.
    """

    def enter(child: str, cat: Catalog) -> tuple[LeanRow, Catalog]:
        entry = cat.lookup(child)
        if entry is None:
            raise IntegrityError(f"{child}: a row of the walk is missing from its catalog", child)
        inner = m.enter(Located(entry, cat))
        return lean_row(inner), inner.catalog

    return walk_lean(top.entry.path, top.catalog, enter)


Enter = Callable[[str, Catalog], tuple[LeanRow, Catalog]]
"""How a walk enters the nested catalog mounted at a path of a catalog: its root row and catalog."""


def walk_lean(top: str, cat: Catalog, enter: Enter) -> Iterator[LeanDir]:
    """:func:`walk_rows` of directory ``top`` of ``cat``, nested catalogs entered by ``enter``
    (e.g. catalogs already loaded and verified by another process: :mod:`rcds.client.get.share`)."""
    groups = cat.lean_tree() if top == cat.mountpoint else None
    stack: list[tuple[str, Catalog, _Groups]] = [(top, cat, groups)]
    while stack:
        path, cat, groups = stack.pop()
        rows = _children(cat, groups, path)
        if not rows:
            yield path, cat, rows
            continue
        rows.sort(key=_BY_NAME)  # code point order of the names: their UTF-8 byte order, as stock lists
        _check_names(rows, path)
        below: list[tuple[str, Catalog, _Groups]] = []
        for i, row in enumerate(rows):
            if row[1] & _S_IFMT != _S_IFDIR:
                continue
            child = f"{path}/{row[0]}"
            if row[5] & FLAG_NESTED_MOUNTPOINT:
                rows[i], inner = enter(child, cat)
                below.append((child, inner, inner.lean_tree()))
            else:
                below.append((child, cat, groups))
        yield path, cat, rows
        below.reverse()  # popped in name order
        stack += below


def _children(cat: Catalog, groups: _Groups, path: str) -> list[LeanRow]:
    if groups is None:
        return cat.lean_listdir(path)
    return groups.get(md5_pair(path)) or []


def _check_names(rows: list[LeanRow], path: str) -> None:
    """Every name plain (see the module docstring) and none twice; else :class:`IntegrityError`."""
    names = [r[0] for r in rows]
    joined = "".join(names)
    if (
        "/" not in joined
        and "\0" not in joined
        and _NOT_NAMES.isdisjoint(names)
        and len(set(names)) == len(names)
    ):
        return
    seen: set[str] = set()
    for name in names:
        where = f"{path}/{name}"
        if name in _NOT_NAMES or "/" in name or "\0" in name:
            raise IntegrityError(
                f"refusing to write {where!r}: the entry name {name!r} would leave the destination", where
            )
        if name in seen:
            raise IntegrityError(f"{path or '/'} lists {name!r} twice: the catalog is inconsistent", where)
        seen.add(name)
