"""One mounted revision: its verified view, path resolution across nested catalogs, walking.

Path resolution goes component by component from the root catalog; when a component is a
nested catalog mount point, the nested catalog is loaded (lazily, once) and the walk continues
in it, so only the catalogs on the path are ever loaded. Symbolic links are followed in the
middle of a path (and at its end when asked), relative ones against their directory and
absolute ones only when they point into the same repository (``/cvmfs/<fqrn>/...``).

A walk reads each catalog it covers whole with one query (:meth:`Catalog.tree`) instead of one
query per directory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from rcds.errors import IntegrityError, NotFoundError
from rcds.format.dirent import FLAG_HIDDEN, FLAG_NESTED_MOUNTPOINT, Dirent
from rcds.format.hashes import ContentHash
from rcds.repo.catalog import Catalog, CatalogTree
from rcds.repo.view import RepositoryView, Trust

MAX_SYMLINKS = 40
DIR_CACHE_SIZE = 16384
LISTING_CACHE_SIZE = 64
"""Directories whose listing is kept, so that opening what was just listed needs no query."""
RESOLVED_CACHE_SIZE = 8192
"""Paths whose resolution is kept."""


class Located(NamedTuple):
    """An entry and the catalog its row was read from."""

    entry: Dirent
    catalog: Catalog


_NEW = tuple.__new__
# Located is a NamedTuple; listings make one per entry, so they build the tuple directly
# (no call of its Python-level __new__).
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000


class Mounted:
    """A revision in use: view, pinned catalogs and a count of users (walks, downloads).

    ``pinned`` collects the hashes of the catalogs loaded so far (they are pinned in the cache).
    A retired revision is closed once its last user is done (see :meth:`release`).
    """

    def __init__(self, trust: Trust, make_view: Callable[[Mounted], RepositoryView]) -> None:
        self.trust = trust
        self.pinned: set[ContentHash] = set()
        self.users = 0
        self.retired = False
        self.closed = False
        self._lock = threading.Lock()
        self._dirs: dict[str, Located] = {}
        self._listings: dict[str, dict[str, Located]] = {}
        self._resolved: dict[tuple[str, bool], Located] = {}
        self.view = make_view(self)

    @property
    def revision(self) -> int:
        """The manifest revision ``S``."""
        return self.trust.manifest.revision

    @property
    def fqrn(self) -> str:
        """The repository name."""
        return self.trust.manifest.repository_name

    def add_pin(self, h: ContentHash) -> None:
        """Record that catalog ``h`` is pinned for this revision."""
        with self._lock:
            self.pinned.add(h)

    def acquire(self) -> None:
        """Count one more user."""
        with self._lock:
            self.users += 1

    def release(self) -> bool:
        """Count one user less; True if the revision is retired and now unused (close it)."""
        with self._lock:
            self.users -= 1
            return self.retired and self.users <= 0 and not self.closed

    def retire(self) -> bool:
        """Mark as replaced; True if nobody uses it (close it now)."""
        with self._lock:
            self.retired = True
            return self.users <= 0 and not self.closed

    def close(self) -> None:
        """Close the view's catalogs."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.view.close()

    # -- resolution ---------------------------------------------------------------------------

    def root(self) -> Located:
        """The repository root."""
        cat = self.view.root_catalog()
        entry = cat.lookup("")
        if entry is None or not entry.is_dir:
            raise IntegrityError(f"the root catalog of {self.fqrn} has no root directory row", "/")
        return Located(entry, cat)

    def child(self, parent: Located, name: str) -> Located | None:
        """The entry ``name`` in directory ``parent``, or None.

        A nested catalog mount point is returned as the parent catalog's row: the nested
        catalog is loaded only when something below it is needed (:meth:`inside`).
        """
        parent = self.inside(parent)
        listing = self._listings.get(parent.entry.path)
        if listing is not None:  # the directory was listed recently: no query needed
            return listing.get(name)
        row = parent.catalog.lookup(f"{parent.entry.path}/{name}")
        return None if row is None else Located(row, parent.catalog)

    def inside(self, directory: Located) -> Located:
        """``directory`` itself, or the root row of the nested catalog mounted there."""
        return self.enter(directory) if directory.entry.is_nested_mountpoint else directory

    def enter(self, mountpoint: Located) -> Located:
        """The root row of the nested catalog mounted at a mount point row (loading it)."""
        path = mountpoint.entry.path
        found = mountpoint.catalog.find_nested(path)
        if found is None:
            raise IntegrityError(f"{path} is a nested catalog mount point missing from nested_catalogs", path)
        cat = self.view.catalog(found[1], path, found[2])
        row = cat.lookup(path)
        if row is None or not row.is_dir:
            raise IntegrityError(f"the nested catalog at {path} has no root directory row", path)
        return Located(row, cat)

    def directory(self, canonical: str) -> Located:
        """The directory at a canonical path (real directories only, no ``..``), cached.

        A nested catalog mount point is returned entered (as the nested catalog's root row).
        """
        found = self._dirs.get(canonical)
        if found is not None:
            return found
        if not canonical:
            loc = self.root()
        else:
            parent, _, name = canonical.rpartition("/")
            child = self.child(self.directory(parent), name)
            if child is None or not child.entry.is_dir:
                raise NotFoundError(f"{canonical}: no such directory in {self.fqrn}")
            loc = child
        return self._remember(self.inside(loc))

    def known_directory(self, canonical: str) -> Located | None:
        """The directory at a canonical path if it was found recently (see :meth:`directory`)."""
        return self._dirs.get(canonical) if canonical else self.directory("")

    def remember_directory(self, loc: Located) -> Located:
        """Keep a directory found elsewhere (:mod:`rcds.client.tree.resolve_many`), entered if it is
        a nested catalog mount point; returns it as :meth:`directory` would."""
        return self._remember(self.inside(loc))

    def known_path(self, path: str) -> Located | None:
        """What :meth:`resolve` (following symlinks) found for ``path`` recently, or None."""
        return self._resolved.get((path, True))

    def remember_path(self, path: str, loc: Located, follow: bool = True) -> Located:
        """Keep what ``resolve(path, follow=follow)`` is (also for answers found elsewhere:
        :mod:`rcds.client.tree.resolve_many`)."""
        if len(self._resolved) >= RESOLVED_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[(path, follow)] = loc
        return loc

    def _remember(self, loc: Located) -> Located:
        if len(self._dirs) >= DIR_CACHE_SIZE:
            self._dirs.clear()
        self._dirs[loc.entry.path] = loc
        return loc

    def resolve(self, path: str, *, follow: bool = True) -> Located:
        """The entry at ``path``; symlinks are followed inside the path and, if ``follow``, at its end.

        Recent results are kept (a revision never changes), so resolving a path again, e.g.
        opening what :meth:`Repository.prefetch` resolved, needs no catalog query.
        """
        key = (path, follow)
        found = self._resolved.get(key)
        if found is None:
            found = self._listed(path, follow)
            if found is not None:
                return found
            found = self.remember_path(path, self._resolve(path, follow), follow)
        return found

    def _listed(self, path: str, follow: bool) -> Located | None:
        """``path`` straight from the listing of its directory, if that was listed recently.

        Only for a canonical path (``/a/b``: no empty, ``.`` or ``..`` component) to something
        other than a symlink to follow: the listings are keyed by the canonical paths of real
        directories, so the answer is exactly what :meth:`_resolve` would find.
        """
        parent, _, name = path.rpartition("/")
        listing = self._listings.get(parent)
        if listing is None:
            return None
        found = listing.get(name)
        if found is None or (follow and (found.entry.mode & _S_IFMT) == _S_IFLNK):
            return None
        return found if is_canonical(path) else None

    def _resolve(self, path: str, follow: bool) -> Located:
        parts = [p for p in path.split("/") if p and p != "."]
        here = None
        if len(parts) > 1 and ".." not in parts:
            # start from the deepest known directory (usually the parent); known directories
            # are real ones (no symlink on their path), so resolving the rest from there is exact
            prefix = "/" + "/".join(parts[:-1])
            depth = len(parts) - 1
            while depth and (here := self._dirs.get(prefix)) is None:
                prefix = prefix[: prefix.rfind("/")]
                depth -= 1
        if here is not None:
            todo = list(reversed(parts[depth:]))
        else:
            here = self.directory("")
            todo = list(reversed(parts))
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if here.entry.path:
                    here = self.directory(here.entry.path.rpartition("/")[0])
                continue
            if not here.entry.is_dir:
                raise NotFoundError(f"{path}: {here.entry.path or '/'} is not a directory")
            found = self.child(here, name)
            if found is None:
                where = f"{here.entry.path}/{name}"
                shown = f" (in {path})" if where != _normal(path) else ""
                raise NotFoundError(f"{where}: no such file or directory in {self.fqrn}{shown}")
            if found.entry.is_symlink and (follow or any(t not in ("", ".") for t in todo)):
                links += 1
                if links > MAX_SYMLINKS:
                    raise NotFoundError(f"{path}: too many levels of symbolic links")
                target = found.entry.symlink
                if target.startswith("/"):
                    prefix = f"/cvmfs/{self.fqrn}"
                    if target != prefix and not target.startswith(prefix + "/"):
                        raise NotFoundError(
                            f"{path}: the symbolic link {found.entry.path} points outside the "
                            f"repository ({target})"
                        )
                    target = target[len(prefix) :]
                    here = self.directory("")
                todo.extend(reversed(target.split("/")))
                continue
            here = found
            if todo and here.entry.is_dir:
                here = self._remember(self.inside(here))
        return here

    def listdir(self, directory: Located) -> list[Located]:
        """The visible entries of a directory, sorted by name; nested catalogs are not loaded."""
        if not directory.entry.is_dir:
            raise NotFoundError(f"{directory.entry.path or '/'} is not a directory")
        directory = self._remember(self.inside(directory))  # opening its files starts here
        cat = directory.catalog
        listing: dict[str, Located] = {}
        visible = []
        for entry in cat.listdir(directory.entry.path):
            loc = _NEW(Located, (entry, cat))
            listing[entry.name] = loc
            if not entry.flags & FLAG_HIDDEN:
                visible.append(loc)
        with self._lock:
            while len(self._listings) >= LISTING_CACHE_SIZE:
                del self._listings[next(iter(self._listings))]
            self._listings[directory.entry.path] = listing
        return visible

    def walk(self, top: Located) -> Iterator[Located]:
        """``top`` and everything below it, parents before children, in name order.

        Nested catalogs are entered (loaded) as the walk reaches them; their mount points are
        yielded as the nested catalog's root row. A catalog whose root the walk covers is read
        whole (:meth:`Catalog.tree`), others a directory at a time.
        """
        top = self.inside(top)
        yield top
        if not top.entry.is_dir:
            return
        cat = top.catalog
        tree = cat.tree() if top.entry.path == cat.mountpoint else None
        stack = [(iter(_rows(cat, tree, top.entry.path)), cat, tree)]
        while stack:
            entries, cat, tree = stack.pop()
            for entry in entries:
                flags = entry.flags
                if flags & FLAG_HIDDEN:
                    continue
                item = _NEW(Located, (entry, cat))
                if flags & FLAG_NESTED_MOUNTPOINT:
                    item = self.enter(item)
                    yield item
                    stack.append((entries, cat, tree))
                    inner = item.catalog
                    inner_tree = inner.tree()
                    stack.append((iter(_rows(inner, inner_tree, item.entry.path)), inner, inner_tree))
                    break
                yield item
                if (entry.mode & _S_IFMT) == _S_IFDIR:
                    stack.append((entries, cat, tree))
                    stack.append((iter(_rows(cat, tree, entry.path)), cat, tree))
                    break


def _rows(catalog: Catalog, tree: CatalogTree | None, path: str) -> list[Dirent]:
    """The rows of directory ``path`` (hidden ones included): from ``tree`` if given, else a query."""
    return tree.listdir(path) if tree is not None else catalog.listdir(path)


def is_canonical(path: str) -> bool:
    """``/a/b``: absolute, not the root, no empty, ``.`` or ``..`` component."""
    if not path.startswith("/") or path == "/":
        return False
    tail = path + "/"
    return "//" not in tail and "/./" not in tail and "/../" not in tail


def _normal(path: str) -> str:
    return "".join("/" + p for p in path.split("/") if p and p != ".")
