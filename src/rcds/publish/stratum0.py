"""The stratum 0 of one repository: every change is one new, signed revision.

Order of a change: objects (each one's writing to disk starts as it is stored), then catalogs
children before parents, then one ``syncfs``, then the signed manifest by atomic rename. A crash
before the rename leaves the previous revision intact (new objects are unreferenced garbage for
``gc``); readers are never blocked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rcds.errors import InputError, IntegrityError
from rcds.format import keys
from rcds.format import manifest as manifest_fmt
from rcds.format import whitelist as whitelist_fmt
from rcds.format.catalog_schema import Tally
from rcds.format.compression import make_object
from rcds.format.deflaters import Compress, Compression, resolve
from rcds.format.dirent import FLAG_DIR, FLAG_NESTED_ROOT, Dirent
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.format.pathhash import parent_path
from rcds.publish import objects, workers
from rcds.publish.catalog_rw import WritableCatalog
from rcds.publish.chain import CatalogChain, read_stats
from rcds.publish.dirsource import iter_directory
from rcds.publish.gc import GcResult, collect
from rcds.publish.layout import Layout, Settings
from rcds.publish.lock import WriterLock
from rcds.publish.members import Member
from rcds.publish.objects import ContentWriter, WriteStats
from rcds.publish.policy import Limits, normalise_name
from rcds.publish.tarsource import iter_tar
from rcds.publish.tree_builder import TreeBuilder
from rcds.publish.whitelist_sign import current_whitelist, install_whitelist, sign_whitelist

log = logging.getLogger("rcds.publish")

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("rcds.publish")


@dataclass(frozen=True)
class ChangeResult:
    """What a change produced."""

    revision: int
    root_catalog: str
    path: str
    stats: WriteStats
    seconds: float
    commit_seconds: float = 0.0
    """Of ``seconds``: writing the catalogs, syncing and signing the manifest."""


def target_path(path: str) -> str:
    """A user-given repository path (``/sw/x``) as a catalog path; the root is refused."""
    rel = normalise_name(path.strip("/"), Limits())
    if not rel:
        raise InputError("the target path must be below the repository root, e.g. /sw/mycode", path)
    return "/" + rel


class Stratum0:
    """Publishing operations on a repository created by :func:`rcds.publish.create.create_repository`."""

    def __init__(self, root: Path, name: str, *, on_revision: Callable[[bytes], None] | None = None) -> None:
        self.layout = Layout(Path(root), name)
        self.name = name
        self.settings: Settings = self.layout.load_settings()
        self.store = self.layout.open_store(self.settings)
        self.on_revision = on_revision
        """Called with the signed manifest of every new revision once it is visible (e.g. to
        send a notification); its failures are logged, never raised."""
        self.compression, self.compress = self._compressor()
        """What new objects are written with: the setting, or its fallback if its library is missing."""

    def _compressor(self) -> tuple[Compression, Compress]:
        resolved = resolve(self.settings.compressor)
        if resolved.note:
            log.warning("%s: %s", self.name, resolved.note)
        return resolved.compression, resolved.compress

    # -- state ------------------------------------------------------------------------
    def manifest(self) -> manifest_fmt.Manifest:
        """The current manifest (our own, so only parsed)."""
        return manifest_fmt.parse(self.store.get(".cvmfspublished")).manifest

    def lock(self) -> WriterLock:
        """The writer lock of this repository."""
        return WriterLock(self.layout.lock, self.name)

    def _begin(self, target: str, now: float | None) -> tuple[Path, manifest_fmt.Manifest, int, CatalogChain]:
        """A change starts (under the lock): a clean work directory, the current manifest, the new
        revision's time and the chain of catalogs from the root down to the one holding ``target``."""
        work = self._prepare_work()
        old = self.manifest()
        stamp = _monotonic_stamp(now, old)
        chain = CatalogChain(
            self.store,
            work,
            self.settings.algorithm,
            old.root_catalog,
            old.root_catalog_size,
            target,
            self.compress,
        )
        return work, old, stamp, chain

    def _prepare_work(self) -> Path:
        shutil.rmtree(self.layout.work, ignore_errors=True)
        self.layout.work.mkdir()
        self.store.clean_temp()
        return self.layout.work

    # -- changes ----------------------------------------------------------------------
    def ingest_tar(
        self,
        stream: BinaryIO,
        path: str,
        *,
        replace: bool = False,
        limits: Limits | None = None,
        now: int | None = None,
        ready: Callable[[], None] | None = None,
    ) -> ChangeResult:
        """Publish a tar stream (plain, gzip, bzip2, xz, zstd) as a nested catalog at ``path``.

        ``ready``: see :meth:`ingest`.
        """
        if _large_file(stream):
            workers.prestart()  # they start while the first members are read
        members = iter_tar(stream, limits)
        try:
            return self.ingest(members, path, replace=replace, now=now, ready=ready)
        finally:
            members.close()  # at once, also after an error: stops a gzip stream's inflating thread

    def ingest_dir(
        self,
        src: Path,
        path: str,
        *,
        replace: bool = False,
        limits: Limits | None = None,
        now: int | None = None,
    ) -> ChangeResult:
        """Publish a local directory tree as a nested catalog at ``path``."""
        return self.ingest(iter_directory(src, limits), path, replace=replace, now=now)

    def ingest(
        self,
        members: Iterable[Member],
        path: str,
        *,
        replace: bool = False,
        now: int | None = None,
        ready: Callable[[], None] | None = None,
    ) -> ChangeResult:
        """Publish members as a new nested catalog at ``path`` (one new revision).

        ``ready``, if given, is called once all members are stored and before anything changes
        the repository; whatever it raises aborts the change (the service passes the check that
        an upload read while it arrived is complete and matches its CID).
        """
        target = target_path(path)
        start = time.monotonic()
        with self.lock():
            work, old, stamp, chain = self._begin(target, now)
            writer = ContentWriter(
                self.store,
                self.settings.algorithm,
                compression=self.compression,
                chunking=self.settings.chunk_params,
            )
            try:
                existing = chain.deepest.catalog.lookup(target)
                if existing is not None and not replace:
                    raise InputError(
                        f"{target} already exists in {self.name}; pass --replace to swap it", target
                    )
                link = chain.deepest.catalog.find_nested(target) if existing is not None else None
                previous = link[1] if link is not None else None
                h, size, root_row, total = self._build_child(work, target, members, writer, stamp, previous)
                if ready is not None:
                    ready()
                if existing is not None:
                    chain.drop_subtree(target)
                chain.ensure_directory(parent_path(target), stamp)
                chain.touch(parent_path(target), stamp)
                chain.deepest.catalog.insert(chain.deepest.catalog.mount_row(root_row))
                chain.deepest.catalog.set_nested(target, h, size)
                chain.add_subtree(total)
                return self._commit(chain, old, stamp, target, writer.stats, start)
            except BaseException:
                writer.close(wait=False)
                chain.abort()
                raise
            finally:
                writer.close(wait=False)

    def _build_child(
        self,
        work: Path,
        target: str,
        members: Iterable[Member],
        writer: ContentWriter,
        now: int,
        previous: ContentHash | None,
    ) -> tuple[ContentHash, int, Dirent, Tally]:
        """Build the new nested catalog at ``target``; return its hash, size, root row and totals."""
        revision = 1
        if previous is not None:
            revision = read_stats(self.store, work, previous, target)[1] + 1
        db = work / "new-child.db"
        name = target.rsplit("/", 1)[1]
        root = Dirent(target, name, stat.S_IFDIR | 0o755, 4096, now, FLAG_DIR | FLAG_NESTED_ROOT)
        cat = WritableCatalog.create(db, root)
        try:
            builder = TreeBuilder(cat, writer, self.settings.algorithm, now)
            for member in members:
                builder.add(member)
            # the key is parsed (~0.1 s of CPU) while the workers store the last contents
            root_row = builder.finish(while_waiting=lambda: _signing_key(self.layout.key("key")))
        except BaseException:
            cat.abort()
            raise
        counters = cat.finalize(revision=revision, previous=previous, last_modified=now, subtree=Tally())
        content = db.read_bytes()
        obj = make_object(content, self.settings.algorithm, self.compress)
        self.store.put_if_absent(obj.hash.object_name(ObjectKind.CATALOG), obj.data)
        db.unlink()
        return obj.hash, len(content), root_row, counters.total()

    def remove(self, path: str, *, now: int | None = None) -> ChangeResult:
        """Remove a subtree as a new revision."""
        return self.remove_many([path], now=now)[0]

    def remove_many(
        self, paths: Sequence[str], *, missing_ok: bool = False, now: int | None = None
    ) -> list[ChangeResult]:
        """Remove several subtrees; paths held by the same catalog go into one revision.

        With ``missing_ok`` absent paths are skipped (a cleanup racing with another remover).
        """
        pending = [target_path(p) for p in paths]
        results: list[ChangeResult] = []
        with self.lock():
            while pending:
                start = time.monotonic()
                _, old, stamp, chain = self._begin(pending[0], now)
                try:
                    here = [p for p in pending if chain.holds(p)] or pending[:1]
                    pending = [p for p in pending if p not in here]
                    removed = []
                    for target in here:
                        if missing_ok and chain.deepest.catalog.lookup(target) is None:
                            continue
                        chain.drop_subtree(target)
                        chain.touch(parent_path(target), stamp)
                        removed.append(target)
                    if not removed:
                        chain.abort()
                        continue
                    results.append(self._commit(chain, old, stamp, ", ".join(removed), WriteStats(), start))
                except BaseException:
                    chain.abort()
                    raise
        return results

    def _commit(
        self,
        chain: CatalogChain,
        old: manifest_fmt.Manifest,
        now: int,
        target: str,
        stats: WriteStats,
        start: float,
    ) -> ChangeResult:
        """Store the chain's catalogs, make the change durable, then sign and swap the manifest."""
        commit_start = time.monotonic()
        root_hash, root_size, revision = chain.commit(now, self.settings.ttl)
        new = old.evolve(
            root_catalog=root_hash,
            root_catalog_size=root_size,
            revision=old.revision + 1,
            ttl=self.settings.ttl,
            timestamp=max(now, old.timestamp),
        )
        if revision != new.revision:
            raise IntegrityError(
                f"root catalog revision {revision} does not follow manifest revision {old.revision}"
            )
        key = _signing_key(self.layout.key("key"))
        self.store.sync()
        signed = new.sign(key)
        self.store.put(".cvmfspublished", signed)
        end = time.monotonic()
        if self.on_revision is not None:
            try:
                self.on_revision(signed)
            except Exception:  # the revision is published; a failed announcement must not say otherwise
                log.exception("announcing revision %d of %s failed", new.revision, self.name)
        return ChangeResult(new.revision, root_hash.hex, target, stats, end - start, end - commit_start)

    def gc(self, keep_revisions: int = 1) -> GcResult:
        """Delete objects unreachable from the newest ``keep_revisions`` revisions."""
        with self.lock():
            work = self._prepare_work()
            m = self.manifest()
            extra = [m.certificate.object_name(ObjectKind.CERTIFICATE)]
            if m.history is not None:
                extra.append(m.history.object_name(ObjectKind.HISTORY))
            if m.metainfo is not None:
                extra.append(m.metainfo.object_name(ObjectKind.METAINFO))
            return collect(self.store, work, m.root_catalog, extra, keep_revisions)

    def set_compression(self, compression: Compression) -> Settings:
        """Write new objects with ``compression`` from now on (saved in ``repo.json``).

        Objects already stored stay valid and referenced; contents published again are stored
        anew with the new compressor (the names differ), and ``gc`` removes the old objects once
        no kept revision references them.
        """
        with self.lock():
            settings = dataclasses.replace(self.layout.load_settings(), compression=str(compression))
            self.layout.save_settings(settings.validate())
            self.settings = settings
            self.compression, self.compress = self._compressor()
        return settings

    def whitelist(self) -> whitelist_fmt.Whitelist | None:
        """The whitelist being served, if readable."""
        return current_whitelist(self.store)

    def resign(self, now: float | None = None) -> whitelist_fmt.Whitelist:
        """Write a fresh whitelist valid for the configured number of days, signed by the master key.

        It is never dated before the current one, so a clock stepping back cannot shorten the
        validity clients see.
        """
        t = dt.datetime.fromtimestamp(int(now if now is not None else time.time()), dt.UTC)
        with self.lock():
            old = self.whitelist()
            if old is not None and old.created > t:
                t = old.created
            return sign_whitelist(self.layout, self.settings, self.store, t)

    def install_whitelist(self, data: bytes, now: float | None = None) -> whitelist_fmt.Whitelist:
        """Install a whitelist signed elsewhere (checked as clients check it first)."""
        t = dt.datetime.fromtimestamp(int(now if now is not None else time.time()), dt.UTC)
        with self.lock():
            return install_whitelist(self.layout, self.settings, self.store, data, t)


_KEYS: dict[Path, tuple[tuple[int, int, int], rsa.RSAPrivateKey]] = {}


def _signing_key(path: Path) -> rsa.RSAPrivateKey:
    """The repository key, parsed once per process while the file stays the same.

    Parsing checks the RSA key, which costs ~0.1-0.3 s: more than the rest of a small publish.
    """
    st = path.stat()
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _KEYS.get(path)
    if cached is not None and cached[0] == ident:
        return cached[1]
    key = keys.load_private_key(path.read_bytes(), str(path))
    _KEYS[path] = (ident, key)
    return key


def _large_file(stream: BinaryIO) -> bool:
    """True if ``stream`` is a regular file big enough for the worker processes."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size >= objects.POOL_MIN_BYTES


def _monotonic_stamp(now: float | None, old: manifest_fmt.Manifest) -> int:
    """The time of a new revision: ``now``, but never before the previous revision's.

    A wall clock stepping back (NTP) must not date a revision, its catalogs or its directory
    entries before the revision it follows.
    """
    return max(int(now if now is not None else time.time()), old.timestamp)
