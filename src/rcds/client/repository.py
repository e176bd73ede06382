"""The client library facade: :class:`Repository`.

Open a repository by name with a CernVM-FS style configuration (:meth:`Repository.open_name`)
or by server URLs and master public key(s) (:meth:`Repository.open_urls`), then use it like a
read-only file system::

    with Repository.open_urls(["http://s1.example.org/cvmfs/sw.example.org"], ["sw.example.org.pub"]) as repo:
        print(repo.revision, repo.listdir("/"))
        with repo.open("/sw/lib/libfoo.so") as f:
            f.seek(1 << 20)
            head = f.read(4096)

Everything handed out was verified first: the manifest against the certificate listed in the
whitelist signed by a master key, every catalog and object against its content hash. Only
verified data enters the caches.
"""

from __future__ import annotations

import datetime as dt
import gc
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, overload

from rcds.client.cache.local import LocalCache
from rcds.client.cache.source import CachedSource
from rcds.client.config.names import check_fqrn
from rcds.client.fetch.prefetch import prefetch
from rcds.client.fetch.trust import MANIFEST, MANIFEST_MAX_SIZE, Breadcrumb, BreadcrumbFile, fetch_trusted
from rcds.client.support import (
    DEFAULT_QUOTA,
    DirEntry,
    KeySpec,
    RepoInfo,
    default_cache_dir,
    load_master_keys,
)
from rcds.client.tree.files import Piece, RepoFile, pieces_of
from rcds.client.tree.mounted import Located, Mounted
from rcds.client.tree.resolve_many import resolve_many
from rcds.client.tree.stat import device_of, make_stat
from rcds.errors import ConfigError, IntegrityError, NetworkError, NotFoundError, RcdsError, StorageError
from rcds.format.dirent import Dirent
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.format.signed import VerifyKey
from rcds.net.fetcher import Fetcher
from rcds.net.proxies import ProxyConfig
from rcds.net.settings import NetSettings
from rcds.repo.catalog import Catalog
from rcds.repo.view import RepositoryView, Trust
from rcds.repo.whitelist_age import assess

if TYPE_CHECKING:
    from rcds.client.cache.alien import AlienCache
    from rcds.client.config.settings import ClientConfig

log = logging.getLogger("rcds.client")

OFFLINE_RETRY = 180.0
"""Seconds between revision checks after a failed one (stock's short TTL)."""

__all__ = ["DirEntry", "RepoInfo", "Repository", "default_cache_dir", "load_master_keys"]


class Repository:
    """A mounted, verified repository (see the module docstring). Thread safe.

    ``max_ttl`` caps the catalog TTL in seconds; ``ttl_override`` replaces it (tests).
    ``clock`` is monotonic seconds, ``now`` the wall clock for whitelist expiry (tests).
    With ``auto_update`` every call first does :meth:`refresh` (a no-op until the TTL expired).
    """

    def __init__(
        self,
        fqrn: str,
        fetcher: Fetcher,
        cache: LocalCache,
        master_keys: Sequence[VerifyKey],
        *,
        alien: AlienCache | None = None,
        max_ttl: float | None = None,
        ttl_override: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] | None = None,
        probe: bool = True,
        auto_update: bool = False,
    ) -> None:
        self.fqrn = check_fqrn(fqrn)
        self.fetcher = fetcher
        self.cache = cache
        self.alien = alien
        self.source = CachedSource(fetcher, cache, alien)
        self.master_keys = list(master_keys)
        self.max_ttl = max_ttl
        self.ttl_override = ttl_override
        self.auto_update = auto_update
        self._clock = clock
        self._now = now
        self._dev = device_of(fqrn)
        self._crumb = BreadcrumbFile(cache.dir, fqrn)
        self._lock = threading.RLock()
        self._live: list[Mounted] = []
        self._closed = False
        self._checking = False
        self.last_error: str | None = None
        self.offline = False
        try:
            if probe and len(fetcher.servers) > 1:
                fetcher.probe()
            self._current = self._mount(self._fetch_trust())
        except BaseException:
            self.source.close()  # stops its cache inserter thread, started by what was fetched
            raise
        self._next_check = self._clock() + self.ttl

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open_urls(
        cls,
        urls: Sequence[str],
        master_keys: Sequence[KeySpec],
        *,
        fqrn: str | None = None,
        cache_dir: Path | None = None,
        quota_bytes: int | None = DEFAULT_QUOTA,
        alien_cache: Path | None = None,
        proxies: str = "DIRECT",
        fallback_proxies: str | None = None,
        net_settings: NetSettings | None = None,
        **kw: object,
    ) -> Repository:
        """Open by server base URLs (``http://host/cvmfs/<fqrn>``) and master key(s).

        ``fqrn`` defaults to the last component of the first URL; ``cache_dir`` to
        :func:`default_cache_dir`; ``proxies`` uses ``CVMFS_HTTP_PROXY`` syntax. Other keywords
        go to the constructor (``max_ttl``, ``ttl_override``, ``clock``, ``now``, ``probe``...).
        """
        if not urls:
            raise ConfigError("no server URL given; pass http://host/cvmfs/<repository name>")
        name = fqrn or urls[0].rstrip("/").rsplit("/", 1)[-1]
        fetcher = Fetcher(urls, ProxyConfig.parse(proxies, fallback_proxies), net_settings)
        return cls._assemble(name, fetcher, master_keys, cache_dir, quota_bytes, alien_cache, kw)

    @classmethod
    def open_name(
        cls,
        fqrn: str,
        config: ClientConfig | None = None,
        *,
        etc_dir: Path | None = None,
        cache_dir: Path | None = None,
        **kw: object,
    ) -> Repository:
        """Open by name with the client configuration (``/etc/cvmfs`` layers unless ``config``).

        Read: ``CVMFS_SERVER_URL``, ``CVMFS_HTTP_PROXY``/``CVMFS_FALLBACK_PROXY``, the
        ``CVMFS_PUBLIC_KEY``/``CVMFS_KEYS_DIR`` keys, ``CVMFS_QUOTA_LIMIT``,
        ``CVMFS_ALIEN_CACHE``, ``CVMFS_MAX_TTL``, ``CVMFS_AUTO_UPDATE`` and the network
        tunables. The cache directory is ``cache_dir``, else ``RCDS_CACHE_DIR``, else
        :func:`default_cache_dir` (never the stock client's cache).
        """
        from rcds.client.config.settings import load_client_config

        if config is None:
            config = (
                load_client_config(fqrn) if etc_dir is None else load_client_config(fqrn, etc_dir=etc_dir)
            )
        settings = config.settings()
        if not settings.public_keys:
            raise ConfigError(
                f"no master public key for {fqrn}: set CVMFS_PUBLIC_KEY or put {fqrn}.pub into "
                f"CVMFS_KEYS_DIR ({config.get('CVMFS_KEYS_DIR')})"
            )
        fetcher = Fetcher.from_params(config.as_dict(), fqrn)
        directory = cache_dir or Path((config.get("RCDS_CACHE_DIR") or "").strip() or default_cache_dir())
        kw.setdefault("max_ttl", settings.max_ttl_seconds)
        kw.setdefault(
            "auto_update", config._bool("CVMFS_AUTO_UPDATE") if "CVMFS_AUTO_UPDATE" in config else False
        )
        return cls._assemble(
            fqrn,
            fetcher,
            list(settings.public_keys),
            directory,
            settings.quota_bytes,
            settings.alien_cache,
            kw,
        )

    @classmethod
    def _assemble(
        cls,
        fqrn: str,
        fetcher: Fetcher,
        master_keys: Sequence[KeySpec],
        cache_dir: Path | None,
        quota_bytes: int | None,
        alien_cache: Path | None,
        kw: dict[str, object],
    ) -> Repository:
        keys = load_master_keys(master_keys)
        cache = LocalCache(Path(cache_dir) if cache_dir else default_cache_dir(), quota_bytes)
        try:
            alien = None
            if alien_cache:
                from rcds.client.cache.alien import AlienCache

                alien = AlienCache(alien_cache)
            return cls(fqrn, fetcher, cache, keys, alien=alien, **kw)  # type: ignore[arg-type]
        except BaseException:
            cache.close()
            fetcher.close()
            raise

    # -- revisions ----------------------------------------------------------------------------

    def _fetch_trust(self) -> Trust:
        now = self._now() if self._now else None

        def fetch(validate: Callable[[bytes], Trust]) -> Trust:
            return self.fetcher.fetch(MANIFEST, validate=validate, max_size=MANIFEST_MAX_SIZE)

        return fetch_trusted(
            self.source, fetch, self.fqrn, self.master_keys, seen=self._crumb.read(), now=now
        )

    def _mount(self, trust: Trust) -> Mounted:
        def make_view(m: Mounted) -> RepositoryView:
            def open_catalog(h: ContentHash, mountpoint: str, size: int | None) -> Catalog:
                cat = self.source.open_catalog(h, mountpoint, size)
                m.add_pin(h)
                return cat

            return RepositoryView(self.source, trust, self.cache.txn, open_catalog=open_catalog)

        mounted = Mounted(trust, make_view)
        try:
            root = mounted.view.root_catalog()
            if root.revision != trust.manifest.revision:
                raise IntegrityError(
                    f"the root catalog has revision {root.revision}, the manifest {trust.manifest.revision}; "
                    "the repository is inconsistent, report this to its operators",
                    "root catalog",
                )
        except BaseException:
            self._close_mounted(mounted)
            raise
        self._crumb.advance(Breadcrumb.of(trust.manifest))
        with self._lock:
            self._live.append(mounted)
        return mounted

    @property
    def ttl(self) -> float:
        """Seconds between revision checks: the root catalog's TTL, capped by ``max_ttl``."""
        if self.ttl_override is not None:
            return self.ttl_override
        ttl = float(self._current_mounted().view.root_catalog().ttl)
        return min(ttl, self.max_ttl) if self.max_ttl else ttl

    def _current_mounted(self) -> Mounted:
        with self._lock:
            if self._closed:
                raise NotFoundError(f"the repository {self.fqrn} was closed; open it again")
            return self._current

    @property
    def revision(self) -> int:
        """The mounted revision (manifest ``S``)."""
        return self._current_mounted().revision

    @property
    def trust(self) -> Trust:
        """The verified manifest, certificate and whitelist of the mounted revision."""
        return self._current_mounted().trust

    def refresh(self, *, force: bool = False) -> bool:
        """Switch to a newer revision if the TTL expired (or ``force``); True if switched.

        A failed check (network, or no trustworthy manifest) keeps the current revision
        ("offline"), records :attr:`last_error` and is retried after at most 180 s. Files open
        on the old revision stay readable. The check runs without holding the repository's
        lock, so readers are served meanwhile; one check runs at a time (a concurrent call
        returns False at once).
        """
        with self._lock:
            if self._checking or (not force and self._clock() < self._next_check):
                return False
            self._checking = True
            old = self._current_mounted()
        new: Mounted | None = None
        try:
            try:
                trust = self._fetch_trust()
                if trust.manifest.revision > old.revision:
                    new = self._mount(trust)
            except (NetworkError, IntegrityError, NotFoundError, StorageError) as exc:
                with self._lock:
                    self.offline = True
                    self.last_error = str(exc)
                    self._next_check = self._clock() + min(OFFLINE_RETRY, self.ttl)
                log.warning(
                    "revision check of %s failed, staying on revision %d: %s", self.fqrn, old.revision, exc
                )
                return False
            stale: Mounted | None = None
            with self._lock:
                if new is not None:
                    old = self._current_mounted()
                    if new.revision > old.revision:
                        self._current = new
                    else:  # a notification switched to this revision or a newer one meanwhile
                        stale, new = new, None
                self.offline = False
                self.last_error = None
                self._next_check = self._clock() + self.ttl
            if stale is not None:
                self._close_mounted(stale)
        finally:
            with self._lock:
                self._checking = False
        if new is None:
            return False
        log.info("%s: switched from revision %d to %d", self.fqrn, old.revision, new.revision)
        if old.retire():
            self._close_mounted(old)
        return True

    def _switch(self, trust: Trust) -> bool:
        """Mount ``trust``'s revision if it is newer than the current one (lock held)."""
        if trust.manifest.revision <= self._current_mounted().revision:
            return False
        self._current = self._mount(trust)
        return True

    def apply_manifest(self, raw: bytes) -> bool:
        """Switch to the revision of a pushed signed manifest (a notification) if it is newer.

        The manifest is verified like a downloaded one (certificate, whitelist, master key, not
        older than the newest revision seen); :class:`IntegrityError` if it is not trustworthy.
        Returns True if the repository switched; an older or equal revision changes nothing.
        """
        from rcds.client.fetch.trust import check_not_rollback
        from rcds.repo.view import establish_trust

        now = self._now() if self._now else None
        trust = establish_trust(self.source, self.fqrn, self.master_keys, now=now, manifest_bytes=raw)
        if trust.manifest.revision < self.revision:
            return False  # a late or repeated message: nothing to do, nothing wrong
        check_not_rollback(trust.manifest, self._crumb.read())
        with self._lock:
            old = self._current_mounted()
            if not self._switch(trust):
                return False
            self._next_check = self._clock() + self.ttl
            self.offline = False
            self.last_error = None
        log.info("%s: notified, switched from revision %d to %d", self.fqrn, old.revision, self.revision)
        if old.retire():
            self._close_mounted(old)
        return True

    def _close_mounted(self, m: Mounted) -> None:
        with self._lock:
            if m in self._live:
                self._live.remove(m)
            still: set[ContentHash] = set()
            for x in self._live:
                still |= x.pinned
        m.close()
        for h in m.pinned - still:
            with suppress(RcdsError):
                self.cache.unpin(h, ObjectKind.CATALOG)

    @contextmanager
    def using(self) -> Iterator[Mounted]:
        """The current revision, kept open (not closed by a switch) until the block ends."""
        if self.auto_update:
            self.refresh()
        m = self._current_mounted()
        m.acquire()
        try:
            yield m
        finally:
            if m.release():
                self._close_mounted(m)

    # -- file system API ----------------------------------------------------------------------

    def _lookup(self, path: str, follow: bool) -> tuple[os.stat_result, str, bool]:
        with self.using() as m:
            loc = m.resolve(path, follow=follow)
            e = loc.entry
            return make_stat(e, loc.catalog.mountpoint, self._dev), e.symlink, e.is_symlink

    def stat(self, path: str) -> os.stat_result:
        """Like :func:`os.stat` (symlinks followed); :class:`NotFoundError` if absent."""
        return self._lookup(path, True)[0]

    def lstat(self, path: str) -> os.stat_result:
        """Like :func:`os.lstat` (a final symlink is not followed)."""
        return self._lookup(path, False)[0]

    def exists(self, path: str) -> bool:
        """True if ``path`` exists (symlinks followed)."""
        try:
            self._lookup(path, True)
        except NotFoundError:
            return False
        return True

    def readlink(self, path: str) -> str:
        """The target of a symbolic link."""
        _, target, is_link = self._lookup(path, False)
        if not is_link:
            raise NotFoundError(f"{path} is not a symbolic link")
        return target

    def entry(self, path: str, *, follow: bool = False) -> Dirent:
        """The catalog entry (row) of ``path``: flags, content hash, link target..."""
        with self.using() as m:
            return m.resolve(path, follow=follow).entry.replace()

    def pieces(self, path: str) -> list[Piece]:
        """The objects a regular file is made of (one, or its chunks), with their offsets."""
        with self.using() as m:
            loc = m.resolve(path, follow=True)
            return pieces_of(loc.entry, loc.catalog)

    def listdir(self, path: str = "/") -> list[str]:
        """Names in a directory (sorted; symlinks followed to reach it)."""
        return [e.name for e in self.scandir(path)]

    def scandir(self, path: str = "/") -> list[DirEntry]:
        """Entries of a directory with their ``lstat`` results (nested catalogs are not loaded)."""
        with self.using() as m:
            loc = m.resolve(path, follow=True)
            return [self._dir_entry(c) for c in m.listdir(loc)]

    def _dir_entry(self, loc: Located) -> DirEntry:
        return DirEntry.of(loc.entry, loc.catalog.mountpoint, self._dev)

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk` (top-down): ``(dirpath, dirnames, filenames)``.

        Symlinks are listed under ``filenames`` and never followed. The walk stays on the
        revision it started on, even if the repository switches meanwhile.
        """
        with self.using() as m:
            start = m.resolve(top, follow=True)
            if not start.entry.is_dir:
                return
            todo = [start]
            while todo:
                here = todo.pop()
                children = m.listdir(here)
                dirs = [c for c in children if c.entry.is_dir]
                yield (
                    here.entry.path or "/",
                    [c.entry.name for c in dirs],
                    [c.entry.name for c in children if not c.entry.is_dir],
                )
                todo.extend(reversed(dirs))

    @overload
    def open(self, path: str, mode: Literal["rb"] = "rb", encoding: None = None) -> RepoFile: ...

    @overload
    def open(self, path: str, mode: Literal["r", "rt"], encoding: str | None = None) -> io.TextIOWrapper: ...

    def open(self, path: str, mode: str = "rb", encoding: str | None = None) -> RepoFile | io.TextIOWrapper:
        """Open a regular file: ``rb`` gives a seekable :class:`~rcds.client.tree.files.RepoFile`
        (chunks loaded on demand), ``r``/``rt`` a text stream."""
        if mode not in ("rb", "r", "rt"):
            raise ConfigError(f"mode {mode!r}: repository files are read-only; use 'rb' or 'r'")
        if self.auto_update:
            self.refresh()
        m = self._current_mounted()
        m.acquire()  # like using(), without a generator per open
        try:
            loc = m.resolve(path, follow=True)
            pieces = pieces_of(loc.entry, loc.catalog)
        finally:
            if m.release():
                self._close_mounted(m)
        raw = RepoFile(
            path,
            loc.entry.size,
            pieces,
            self._open_object,
            compressed=loc.entry.compressed,
            read_object=self.source.read_object,
        )
        if mode == "rb":
            return raw
        return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding)

    def prefetch(self, paths: Iterable[str]) -> int:
        """Bring the objects of the regular files ``paths`` into the local cache, pipelined.

        Worth it before reading many files that are likely not cached: one batch of pipelined
        requests instead of a round trip per file. The paths are resolved in batches
        (:mod:`rcds.client.tree.resolve_many`), symlinks followed; objects already cached are
        skipped. Returns how many objects were downloaded (or taken from the alien cache). With
        a quota smaller than the files, early ones may be evicted again. Downloading and
        inflating run on two threads (:mod:`rcds.client.fetch.prefetch`).
        """
        collecting = gc.isenabled()
        gc.disable()  # a few small objects per file, none of them in a cycle: no scans meanwhile
        try:
            with self.using() as m:
                return prefetch(self.source, resolve_many(m, list(paths)))
        finally:
            if collecting:
                gc.enable()

    def _open_object(self, h: ContentHash, kind: ObjectKind, size: int, compressed: bool) -> BinaryIO:
        return self.source.open_object(h, kind, size=size, compressed=compressed)

    def read_bytes(self, path: str) -> bytes:
        """The whole content of a regular file."""
        with self.open(path) as f:
            return f.readall()

    # -- state --------------------------------------------------------------------------------

    def info(self) -> RepoInfo:
        """Revision, age, TTL, offline state, hosts and proxies, cache figures."""
        trust = self._current_mounted().trust
        m = trust.manifest
        now = self._now() if self._now else dt.datetime.now(dt.UTC)
        return RepoInfo(
            fqrn=self.fqrn,
            revision=m.revision,
            root_hash=m.root_catalog.hex,
            published=m.timestamp,
            age=max(0.0, now.timestamp() - m.timestamp),
            ttl=self.ttl,
            next_check_in=max(0.0, self._next_check - self._clock()),
            offline=self.offline,
            last_error=self.last_error,
            endpoints=tuple(self.fetcher.status()),
            cache_dir=self.cache.dir,
            cache_bytes=self.cache.size(),
            cache_quota=self.cache.quota_bytes,
            alien_cache=self.alien.dir if self.alien else None,
            sources=dict(self.source.stats),
            whitelist=assess(self.fqrn, trust.whitelist, now),
        )

    def close(self) -> None:
        """Unpin this process's catalogs, close catalogs, connections and the cache database.

        Close files opened from the repository first.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
        for m in live:
            self._close_mounted(m)
        self.source.close()
        self.cache.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Repository {self.fqrn} revision {self._current.revision}>"
