"""Fetching a trusted manifest with fail-over, and rollback protection.

The whole chain of trust (reference §3.4 and §4.5) is checked *inside* the fetcher's validation
callback, so a host that serves a bad signature, an expired whitelist, a manifest for another
repository or an older revision than one already seen counts as bad data there: the manifest is
fetched again without caches, then from the next host.

Rollback protection uses a breadcrumb per repository in the cache directory, as stock does
(``cvmfschecksum.<fqrn>`` holding ``<root hash>T<timestamp>R<revision>``): a manifest whose
revision ``S`` or timestamp ``T`` is older than the breadcrumb's is refused, and so is the same
revision with another root catalog. The breadcrumb only moves forward, also when several
processes share the cache directory.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from rcds.errors import IntegrityError, NetworkError, StorageError
from rcds.format.hashes import ContentHash
from rcds.format.manifest import Manifest
from rcds.format.signed import VerifyKey
from rcds.net.failures import FetchError
from rcds.repo.source import Source
from rcds.repo.view import Trust, establish_trust

MANIFEST = ".cvmfspublished"
MANIFEST_MAX_SIZE = 1 << 20
_CRUMB = re.compile(r"([0-9a-f]{40}(?:-rmd160|-shake128)?)T(\d+)R(\d+)\s*")


class Breadcrumb(NamedTuple):
    """The newest revision seen of a repository: root catalog hash, publish time ``T``, revision ``S``."""

    root_hash: ContentHash
    timestamp: int
    revision: int

    def __str__(self) -> str:
        return f"{self.root_hash.hex}T{self.timestamp}R{self.revision}"

    @classmethod
    def of(cls, m: Manifest) -> Breadcrumb:
        """The breadcrumb of a manifest."""
        return cls(m.root_catalog, m.timestamp, m.revision)

    def newer_than(self, other: Breadcrumb | None) -> bool:
        """True if this breadcrumb records a later revision than ``other`` (or there is none)."""
        return other is None or (self.revision, self.timestamp) > (other.revision, other.timestamp)


class BreadcrumbFile:
    """``<cache dir>/cvmfschecksum.<fqrn>``: read, and advanced (never moved back) under a lock."""

    def __init__(self, cache_dir: Path, fqrn: str) -> None:
        self.path = Path(cache_dir) / f"cvmfschecksum.{fqrn}"
        self._lock = Path(cache_dir) / f"lock_checksum.{fqrn}"

    def read(self) -> Breadcrumb | None:
        """The breadcrumb, or ``None`` when absent or unreadable (a damaged file is ignored)."""
        try:
            text = self.path.read_text("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        m = _CRUMB.fullmatch(text)
        if m is None:
            return None
        try:
            return Breadcrumb(ContentHash.parse(m.group(1)), int(m.group(2)), int(m.group(3)))
        except IntegrityError:
            return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def advance(self, crumb: Breadcrumb) -> None:
        """Record ``crumb`` unless the file already holds a newer one (atomic replace)."""
        try:
            with self._locked():
                if not crumb.newer_than(self.read()):
                    return
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(str(crumb) + "\n", "ascii")
                os.replace(tmp, self.path)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def check_not_rollback(m: Manifest, seen: Breadcrumb | None) -> None:
    """Refuse a manifest older than the newest revision already seen (reference §3.4 step 4)."""
    if seen is None:
        return
    stale = (
        f"{MANIFEST} offers revision {m.revision} published at {m.timestamp}, but revision "
        f"{seen.revision} published at {seen.timestamp} was already seen"
    )
    hint = (
        "; this is a rollback: the server is a stale replica (or an attacker replays an old "
        "revision). Try again later or use another server"
    )
    if m.revision < seen.revision or m.timestamp < seen.timestamp:
        raise IntegrityError(stale + hint, MANIFEST)
    if m.revision == seen.revision and m.root_catalog != seen.root_hash:
        raise IntegrityError(
            f"{MANIFEST} offers revision {m.revision} with root catalog {m.root_catalog.hex}, "
            f"but the same revision was seen with root catalog {seen.root_hash.hex}; refusing a "
            "repository that rewrote its history (if it was re-created on purpose, remove the "
            "breadcrumb file cvmfschecksum.<name> from the cache directory)",
            MANIFEST,
        )


FetchManifest = Callable[[Callable[[bytes], Trust]], Trust]
"""Downloads the manifest and returns ``validate(body)``, failing over on IntegrityError."""


class ManifestUnavailableError(NetworkError):
    """No server offered a manifest: network trouble only (the client may stay offline)."""


def fetch_trusted(
    source: Source,
    fetch_manifest: FetchManifest,
    fqrn: str,
    master_keys: Sequence[VerifyKey],
    *,
    seen: Breadcrumb | None = None,
    now: dt.datetime | None = None,
) -> Trust:
    """Fetch ``.cvmfspublished`` and establish trust in it, failing over between hosts.

    ``fetch_manifest(validate)`` downloads the manifest and returns ``validate(body)`` (as
    :meth:`rcds.net.fetcher.Fetcher.fetch` does, failing over when ``validate`` raises
    :class:`IntegrityError`). ``source`` provides the certificate and the whitelist.

    Raises :class:`IntegrityError` when some server answered but none with a trustworthy
    manifest (the message gives the last reason), :class:`ManifestUnavailableError` when no server
    could be reached at all.
    """
    problems: list[IntegrityError] = []

    def validate(body: bytes) -> Trust:
        try:
            trust = establish_trust(source, fqrn, master_keys, now=now, manifest_bytes=body)
            check_not_rollback(trust.manifest, seen)
        except IntegrityError as exc:
            problems.append(exc)
            raise
        return trust

    try:
        return fetch_manifest(validate)
    except FetchError as exc:
        if problems:
            raise IntegrityError(
                f"no server offers a trustworthy manifest of {fqrn}; the last problem: {problems[-1]}\n{exc}",
                MANIFEST,
            ) from exc
        raise ManifestUnavailableError(str(exc)) from exc
