"""Keep several stratum 1 replicas fresh: one :func:`~rcds.replica.snapshot.snapshot` per repository.

A publishing service calls :meth:`Replicator.pull_all` periodically for its partners'
repositories; a failure of one repository is returned, not raised, so the others still update.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from rcds.errors import RcdsError
from rcds.format.keys import load_public_key_file
from rcds.replica.snapshot import SnapshotResult, init_replica, snapshot
from rcds.repo.http_source import HttpSource
from rcds.repo.source import Source

log = logging.getLogger("rcds.replica")

SourceFactory = Callable[[str], Source]
"""Makes the source for an upstream base URL (default: :meth:`HttpSource.for_url`)."""


@dataclass(frozen=True)
class ReplicaSpec:
    """One repository to replicate.

    ``url`` is the upstream base URL (``http://host/cvmfs/<fqrn>``); ``master_keys`` are the
    repository's master public key(s), or the path of a PEM file holding one; ``dest`` is the
    replica directory (created on first use) or an ``s3://bucket/prefix`` (the bucket must exist).
    """

    fqrn: str
    url: str
    master_keys: Sequence[RSAPublicKey] | RSAPublicKey | Path
    dest: Path | str

    def keys(self) -> list[RSAPublicKey]:
        """The master public keys (loaded from the file if a path was given)."""
        if isinstance(self.master_keys, Path):
            return [load_public_key_file(self.master_keys)]
        if isinstance(self.master_keys, RSAPublicKey):
            return [self.master_keys]
        return list(self.master_keys)


class Replicator:
    """Snapshots a list of repositories, capturing each repository's error.

    ``workers`` is the number of download threads per snapshot; ``source_factory`` makes the
    upstream source from a spec's URL; ``clock`` gives the time for whitelist checks and the
    snapshot stamp (default: now).
    """

    def __init__(
        self,
        *,
        workers: int = 8,
        source_factory: SourceFactory = HttpSource.for_url,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.workers = workers
        self.source_factory = source_factory
        self.clock = clock

    def pull(self, spec: ReplicaSpec) -> SnapshotResult:
        """Snapshot one repository (errors are raised)."""
        dest = init_replica(spec.dest)
        source = self.source_factory(spec.url)
        try:
            now = self.clock() if self.clock is not None else None
            return snapshot(source, spec.fqrn, spec.keys(), dest, workers=self.workers, now=now)
        finally:
            dest.close()
            close = getattr(source, "close", None)
            if callable(close):
                close()

    def pull_all(self, specs: Sequence[ReplicaSpec]) -> list[SnapshotResult | RcdsError]:
        """Snapshot every repository in order; return each one's result or its error, in spec order.

        Errors are the rcds errors a snapshot raises on purpose (NetworkError, IntegrityError,
        NotFoundError, LockedError, StorageError...); anything else is a bug and propagates.
        """
        out: list[SnapshotResult | RcdsError] = []
        for spec in specs:
            try:
                out.append(self.pull(spec))
            except RcdsError as exc:
                log.warning("snapshot of %s from %s failed: %s", spec.fqrn, spec.url, exc)
                out.append(exc)
        return out
