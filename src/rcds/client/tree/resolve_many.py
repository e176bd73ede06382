"""Resolving many paths at once (:meth:`Repository.prefetch
<rcds.client.repository.Repository.prefetch>`): a few catalog queries instead of one per
path component.

:meth:`Mounted.resolve <rcds.client.tree.mounted.Mounted.resolve>` looks each component up with
its own query, about 30 µs each; a list of 2,000 files in 1,300 directories costs 3,300 of
them. Here the parent directories are found level by level, and then the files, with one
:meth:`~rcds.repo.catalog.Catalog.lookup_many` per catalog and level. Only plain answers are
taken from the batch: a canonical path (``/a/b``) whose directories are real directories and
whose last component is not a symbolic link. Everything else (a symlink on the way, a missing
entry, a path with ``.`` or ``..``) goes through :meth:`Mounted.resolve`, in the order of the
list, so the answers and the errors are exactly those of resolving the paths one by one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rcds.client.tree.mounted import Located, is_canonical
from rcds.repo.catalog import Catalog

if TYPE_CHECKING:
    from rcds.client.tree.mounted import Mounted

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000


def resolve_many(mounted: Mounted, paths: Sequence[str]) -> list[Located]:
    """What ``[mounted.resolve(p) for p in paths]`` gives (symlinks followed), or its first error."""
    found: list[Located | None] = [None] * len(paths)
    wanted: defaultdict[str, list[int]] = defaultdict(list)  # parent directory -> indices
    for i, path in enumerate(paths):
        known = mounted.known_path(path)
        if known is not None:
            found[i] = known
        elif is_canonical(path):
            wanted[path[: path.rfind("/")]].append(i)
    directories = _directories(mounted, wanted)
    by_catalog: defaultdict[Catalog, list[int]] = defaultdict(list)
    for parent, indices in wanted.items():
        directory = directories.get(parent)
        if directory is not None:
            by_catalog[directory.catalog] += indices
    for catalog, indices in by_catalog.items():
        rows = catalog.lookup_many([paths[i] for i in indices])
        for i in indices:
            row = rows.get(paths[i])
            if row is not None and (row.mode & _S_IFMT) != _S_IFLNK:
                found[i] = mounted.remember_path(paths[i], Located(row, catalog))
    return [loc if loc is not None else mounted.resolve(paths[i]) for i, loc in enumerate(found)]


def _directories(mounted: Mounted, wanted: dict[str, list[int]]) -> dict[str, Located]:
    """The real directories among ``wanted`` (entered when they are nested catalog mount
    points), found level by level with batched lookups; others are left out."""
    todo: set[str] = set()
    for path in wanted:
        while path and path not in todo and mounted.known_directory(path) is None:
            todo.add(path)
            path = path[: path.rfind("/")]
    levels: defaultdict[int, list[str]] = defaultdict(list)
    for path in todo:
        levels[path.count("/")].append(path)
    for depth in sorted(levels):
        by_catalog: defaultdict[Catalog, list[str]] = defaultdict(list)
        for path in levels[depth]:
            parent = mounted.known_directory(path[: path.rfind("/")])
            if parent is not None:  # else: not a real directory, resolved one by one later
                by_catalog[parent.catalog].append(path)
        for catalog, batch in by_catalog.items():
            for row in catalog.lookup_many(batch).values():
                if (row.mode & _S_IFMT) == _S_IFDIR:
                    mounted.remember_directory(Located(row, catalog))
    out: dict[str, Located] = {}
    for path in wanted:
        directory = mounted.known_directory(path)
        if directory is not None:
            out[path] = directory
    return out
