"""Test helpers for the repository view and verifier tests.

* :func:`build_tar` builds a small tarball in memory.
* :class:`Tamper` damages a repository created by :func:`rcds.publish.create.create_repository`
  on purpose, then re-hashes, re-links and re-signs everything above the damage (catalog
  objects up to the root, the manifest, the whitelist) with the repository's own keys, so that
  only the intended defect remains for the verifier to find.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import sqlite3
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.format import keys
from rcds.format import manifest as manifest_fmt
from rcds.format import whitelist as whitelist_fmt
from rcds.format.catalog_schema import Counters
from rcds.format.compression import make_object, verify_object
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.repo.catalog import Catalog
from rcds.repo.source import StoreSource
from rcds.repo.view import RepositoryView, open_view
from rcds.storage.local import LocalStore

_seq = count()


@dataclass(frozen=True)
class Item:
    """One tar member for :func:`build_tar`: a file (data), a directory or a symlink (target)."""

    name: str
    data: bytes | None = None
    kind: str = "file"  # file, dir, symlink
    target: str = ""
    mode: int = 0o644
    mtime: int = 1_700_000_000


def build_tar(items: Sequence[Item]) -> io.BytesIO:
    """An uncompressed PAX tarball of ``items``, rewound."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for it in items:
            ti = tarfile.TarInfo(it.name)
            ti.mode = it.mode
            ti.mtime = it.mtime
            if it.kind == "file":
                data = it.data or b""
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            elif it.kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.type = tarfile.SYMTYPE
                ti.linkname = it.target
                tf.addfile(ti)
    buf.seek(0)
    return buf


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a repository directory (fixtures are read-only: the copy is made writable)."""
    shutil.copytree(src, dst, symlinks=True)
    for d, dirs, files in os.walk(dst):
        os.chmod(d, 0o755)
        for f in files:
            p = Path(d, f)
            if not p.is_symlink():
                os.chmod(p, 0o644)
        for sub in dirs:
            os.chmod(Path(d, sub), 0o755)
    return dst


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip the bits of one byte of a file (the middle one by default)."""
    data = bytearray(path.read_bytes())
    pos = len(data) // 2 if offset is None else offset
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


class Tamper:
    """Deliberate damage to a repository under ``root`` (``root/public`` served, ``root/keys``)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.public = self.root / "public"
        self.store = LocalStore(self.public)
        self.work = self.root / "tamper-work"
        self.work.mkdir(exist_ok=True)

    # -- keys and root files -------------------------------------------------------------------
    def _key(self, suffix: str) -> Path:
        return self.root / "keys" / f"{self.name}.{suffix}"

    @property
    def repo_key(self) -> rsa.RSAPrivateKey:
        """The key that signs manifests."""
        return keys.load_private_key(self._key("key").read_bytes())

    @property
    def master_key(self) -> rsa.RSAPrivateKey:
        """The key that signs the whitelist."""
        return keys.load_private_key(self._key("masterkey").read_bytes())

    @property
    def master_public(self) -> rsa.RSAPublicKey:
        """The master public key clients trust."""
        return keys.load_public_key_file(self._key("pub"))

    def manifest(self) -> manifest_fmt.Manifest:
        """The current manifest (parsed only)."""
        return manifest_fmt.parse(self.store.get(".cvmfspublished")).manifest

    @property
    def algorithm(self) -> Algorithm:
        """The repository's hash algorithm (that of the root catalog hash)."""
        return self.manifest().root_catalog.algorithm

    def whitelist(self) -> whitelist_fmt.Whitelist:
        """The current whitelist (parsed only)."""
        return whitelist_fmt.parse(self.store.get(".cvmfswhitelist")).whitelist

    def resign_manifest(
        self, key: rsa.RSAPrivateKey | None = None, **changes: object
    ) -> manifest_fmt.Manifest:
        """Rewrite ``.cvmfspublished`` with ``changes``, signed by ``key`` (default: the repository key)."""
        m = self.manifest().evolve(**changes)
        self.store.put(".cvmfspublished", m.sign(key or self.repo_key))
        return m

    def resign_whitelist(
        self,
        *,
        key: rsa.RSAPrivateKey | None = None,
        created: dt.datetime | None = None,
        expires: dt.datetime | None = None,
        name: str | None = None,
        fingerprints: tuple[str, ...] | None = None,
    ) -> whitelist_fmt.Whitelist:
        """Rewrite ``.cvmfswhitelist`` with some fields changed, signed by ``key`` (default: master key)."""
        old = self.whitelist()
        wl = whitelist_fmt.Whitelist(
            created=created or old.created,
            expires=expires or old.expires,
            repository_name=name or old.repository_name,
            fingerprints=fingerprints if fingerprints is not None else old.fingerprints,
        )
        self.store.put(".cvmfswhitelist", wl.sign(key or self.master_key, self.algorithm))
        return wl

    # -- reading -----------------------------------------------------------------------------------
    def view(self) -> RepositoryView:
        """A verified view (use before tampering, to find object names)."""
        return open_view(StoreSource(self.store), self.name, [self.master_public])

    def file_object(self, path: str) -> str:
        """The object name holding a non-chunked regular file."""
        with self.view() as v:
            entry = v.lookup(path)
            assert entry.hash is not None and not entry.is_chunked, path
            return entry.hash.object_name()

    def chunk_objects(self, path: str) -> list[str]:
        """The ``P`` object names of a chunked file, in offset order."""
        with self.view() as v:
            entry = v.lookup(path)
            assert entry.is_chunked, path
            return [c.hash.object_name(ObjectKind.PARTIAL) for c in v.catalog_for(path).chunks(entry)]

    def catalog_chain(self, mountpoint: str) -> list[tuple[str, ContentHash, int]]:
        """(mount point, hash, uncompressed size) of every catalog from the root down to ``mountpoint``."""
        m = self.manifest()
        chain = [("", m.root_catalog, m.root_catalog_size)]
        while chain[-1][0] != mountpoint:
            mount, h, _size = chain[-1]
            path = self._load(h)
            with Catalog(path, mount) as cat:
                below = [n for n in cat.nested() if mountpoint == n[0] or mountpoint.startswith(n[0] + "/")]
            path.unlink()
            if not below:
                raise AssertionError(f"no nested catalog leads to {mountpoint}")
            chain.append(below[0])
        return chain

    def catalog_object(self, mountpoint: str) -> str:
        """The object name of the catalog mounted at ``mountpoint``."""
        return self.catalog_chain(mountpoint)[-1][1].object_name(ObjectKind.CATALOG)

    def _load(self, h: ContentHash) -> Path:
        name = h.object_name(ObjectKind.CATALOG)
        path = self.work / f"cat-{next(_seq)}.db"
        path.write_bytes(verify_object(self.store.get(name), h, what=name))
        return path

    def _store(self, path: Path) -> tuple[ContentHash, int]:
        content = path.read_bytes()
        obj = make_object(content, self.algorithm)
        self.store.put(obj.hash.object_name(ObjectKind.CATALOG), obj.data)
        path.unlink()
        return obj.hash, len(content)

    # -- damage ------------------------------------------------------------------------------------
    def edit_catalog(
        self,
        mountpoint: str,
        edit: Callable[[sqlite3.Connection], None],
        *,
        fix_counters: bool = False,
    ) -> ContentHash:
        """Change the catalog at ``mountpoint`` with ``edit`` and re-link it up to a re-signed manifest.

        With ``fix_counters`` the edited catalog's ``self_*`` counters are recomputed and every
        ancestor's ``subtree_*`` counters follow, so that the edit itself is the only defect.
        Returns the new hash of the edited catalog.
        """
        chain = self.catalog_chain(mountpoint)
        path = self._load(chain[-1][1])
        old = _counters(path, mountpoint) if fix_counters else None
        _run(path, edit)
        delta = None
        if old is not None:
            with Catalog(path, mountpoint) as cat:
                new_self = cat.recount_self()
            new = Counters(new_self, old.subtree)
            _run(path, lambda db: _write_counters(db, new))
            delta = new.total() - old.total()
        h, size = self._store(path)
        edited = h
        for i in range(len(chain) - 2, -1, -1):
            mount, parent_hash, _size = chain[i]
            ppath = self._load(parent_hash)
            link = (h.hex, size, chain[i + 1][0])

            def relink(db: sqlite3.Connection, link: tuple[str, int, str] = link) -> None:
                cur = db.execute("UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = ?", link)
                assert cur.rowcount == 1, link

            _run(ppath, relink)
            if delta is not None:
                pold = _counters(ppath, mount)
                pnew = Counters(pold.self, pold.subtree + delta)
                _run(ppath, lambda db, c=pnew: _write_counters(db, c))  # type: ignore[misc]
            h, size = self._store(ppath)
        self.resign_manifest(root_catalog=h, root_catalog_size=size)
        return edited


def _run(path: Path, edit: Callable[[sqlite3.Connection], None]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("BEGIN")
        edit(db)
        db.execute("COMMIT")
        db.execute("VACUUM")
    finally:
        db.close()


def _counters(path: Path, mountpoint: str) -> Counters:
    with Catalog(path, mountpoint) as cat:
        return cat.counters()


def _write_counters(db: sqlite3.Connection, counters: Counters) -> None:
    db.executemany("UPDATE statistics SET value = ? WHERE counter = ?", [(v, k) for k, v in counters.rows()])
