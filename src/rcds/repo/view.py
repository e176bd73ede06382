"""A read-only, verified view of one repository revision.

Trust chain: master key(s) -> whitelist -> certificate fingerprint -> manifest signature
-> root catalog hash -> nested catalog hashes -> object hashes. Nothing is handed out before
it is checked.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rcds.errors import IntegrityError, NotFoundError
from rcds.format import manifest, signed, whitelist
from rcds.format.dirent import Dirent
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.repo.catalog import Catalog
from rcds.repo.source import Source

if TYPE_CHECKING:
    import tempfile


def normalise_path(path: str) -> str:
    """A user path (``/a/b``, ``a/b/``, ``/``) as a catalog path (``/a/b``, root = ``""``)."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise NotFoundError(f"path {path!r} contains '..'; use an absolute repository path")
    return "".join("/" + p for p in parts)


class Trust(NamedTuple):
    """The verified root of a revision (``certificate.to_x509()`` gives the full certificate)."""

    manifest: manifest.Manifest
    certificate: signed.RepoCertificate
    whitelist: whitelist.Whitelist


def establish_trust(
    source: Source,
    fqrn: str,
    master_keys: Sequence[signed.VerifyKey],
    *,
    now: dt.datetime | None = None,
    manifest_bytes: bytes | None = None,
) -> Trust:
    """Fetch and check manifest, certificate and whitelist, in the client's order."""
    raw = manifest_bytes if manifest_bytes is not None else source.root_file(".cvmfspublished")
    signed_manifest = manifest.parse(raw)
    m = signed_manifest.manifest
    if m.repository_name != fqrn:
        raise IntegrityError(
            f".cvmfspublished is for repository {m.repository_name!r}, not {fqrn!r}", ".cvmfspublished"
        )
    cert_pem = source.object(m.certificate, ObjectKind.CERTIFICATE)
    cert = signed.load_repository_certificate(cert_pem, m.certificate.object_name(ObjectKind.CERTIFICATE))
    signed_manifest.verify_signature(cert.key)
    signed_whitelist = whitelist.parse(source.root_file(".cvmfswhitelist"))
    signed_whitelist.verify(master_keys, fqrn, now)
    fp = cert.fingerprint(m.root_catalog.algorithm)
    if not signed_whitelist.whitelist.lists(fp):
        raise IntegrityError(
            f"the repository certificate {fp} is not listed in .cvmfswhitelist; "
            "the whitelist must be re-signed for the current certificate",
            ".cvmfswhitelist",
        )
    return Trust(m, cert, signed_whitelist.whitelist)


CatalogOpener = Callable[[ContentHash, str, "int | None"], Catalog]
"""Opens a verified catalog ``(hash, mount point, uncompressed size)``; e.g. from a local cache."""


class RepositoryView:
    """Verified read access to the revision named by a trusted manifest.

    ``open_catalog`` replaces the default way of loading a catalog (fetch it from ``source``,
    verify it and write it into ``workdir``), e.g. to open catalogs kept in a client cache.
    """

    def __init__(
        self,
        source: Source,
        trust: Trust,
        workdir: Path | None = None,
        *,
        open_catalog: CatalogOpener | None = None,
    ) -> None:
        self.source = source
        self.trust = trust
        self._open_catalog = open_catalog
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="rcds-view-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self._catalogs: dict[tuple[ContentHash, str], Catalog] = {}
        self._lock = threading.Lock()

    @property
    def manifest(self) -> manifest.Manifest:
        """The verified manifest."""
        return self.trust.manifest

    def close(self) -> None:
        """Close catalogs and remove temporary files."""
        with self._lock:
            for c in self._catalogs.values():
                c.close()
            self._catalogs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RepositoryView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- catalogs ---------------------------------------------------------------------
    def catalog(self, h: ContentHash, mountpoint: str, size: int | None = None) -> Catalog:
        """Load (once) and open the catalog with hash ``h`` mounted at ``mountpoint``."""
        key = (h, mountpoint)
        with self._lock:
            found = self._catalogs.get(key)
        if found is not None:
            return found
        if self._open_catalog is not None:
            cat = self._open_catalog(h, mountpoint, size or None)
        else:
            content = self.source.object(h, ObjectKind.CATALOG, size=size or None)
            path = self.workdir / f"{h.hex}.{os.getpid()}.{threading.get_ident()}.db"
            path.write_bytes(content)
            cat = Catalog(path, mountpoint, what=f"catalog {mountpoint or '/'} ({h.hex})")
        with self._lock:
            kept = self._catalogs.setdefault(key, cat)
        if kept is not cat:  # another thread loaded it meanwhile
            cat.close()
        return kept

    def root_catalog(self) -> Catalog:
        """The root catalog of this revision."""
        m = self.manifest
        return self.catalog(m.root_catalog, "", m.root_catalog_size or None)

    def catalog_for(self, path: str) -> Catalog:
        """The catalog that holds the row of ``path`` (a nested mount point's own row lives in the child)."""
        path = normalise_path(path)
        cat = self.root_catalog()
        while True:
            rest = path[len(cat.mountpoint) :]
            parts = [p for p in rest.split("/") if p]
            prefix = cat.mountpoint
            for part in parts:
                prefix = f"{prefix}/{part}"
                found = cat.find_nested(prefix)
                if found is not None:
                    cat = self.catalog(found[1], prefix, found[2])
                    break
            else:
                return cat

    # -- entries ----------------------------------------------------------------------
    def lookup(self, path: str) -> Dirent:
        """The entry at ``path``; NotFoundError if absent."""
        path = normalise_path(path)
        entry = self.catalog_for(path).lookup(path)
        if entry is None:
            raise NotFoundError(
                f"{path or '/'}: no such file or directory in {self.manifest.repository_name}"
            )
        return entry

    def listdir(self, path: str) -> list[Dirent]:
        """Entries of a directory, without hidden ones."""
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotFoundError(f"{entry.path or '/'} is not a directory")
        return [d for d in self.catalog_for(entry.path).listdir(entry.path) if not d.is_hidden]

    def read_chunks(self, entry: Dirent) -> Iterator[bytes]:
        """The verified content of a regular file, piece by piece."""
        if not entry.is_regular:
            raise NotFoundError(f"{entry.path} is not a regular file")
        if entry.is_chunked:
            for c in self.catalog_for(entry.path).chunks(entry):
                yield self.source.object(c.hash, ObjectKind.PARTIAL, size=c.size, compressed=entry.compressed)
        elif entry.hash is not None:
            yield self.source.object(entry.hash, size=entry.size, compressed=entry.compressed)
        elif entry.size:
            raise IntegrityError(f"{entry.path}: a non-empty file without content hash", entry.path)

    def read(self, path: str) -> bytes:
        """The verified content of a regular file."""
        return b"".join(self.read_chunks(self.lookup(path)))

    def walk(self, path: str = "") -> Iterator[Dirent]:
        """Every entry at or below ``path``, parents before children."""
        top = self.lookup(path)
        yield top
        stack = [top] if top.is_dir else []
        while stack:
            d = stack.pop()
            for child in self.listdir(d.path):
                yield child
                if child.is_dir:
                    stack.append(child)


def open_view(
    source: Source,
    fqrn: str,
    master_keys: Sequence[signed.VerifyKey],
    *,
    now: dt.datetime | None = None,
    workdir: Path | None = None,
) -> RepositoryView:
    """Establish trust and return a view of the current revision."""
    return RepositoryView(source, establish_trust(source, fqrn, master_keys, now=now), workdir)
