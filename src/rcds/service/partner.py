"""Replicas of the partner server's repositories, pulled periodically (stratum-1 style).

The partner's repository list comes from its ``/pubapi/config``; each repository is snapshotted
from ``replica.partner_repository_url`` into ``<state_dir>/replicas/<fqrn>`` with the master key
``<partner_keys_dir>/<fqrn>.pub``. Replicas are indexed for ``exists`` and served like own
repositories.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import urllib3

from rcds.clock import Clock, system_clock, utc_now
from rcds.errors import RcdsError
from rcds.replica.replicator import ReplicaSpec, Replicator
from rcds.replica.snapshot import SnapshotResult
from rcds.service.auth.truststore import TrustStore
from rcds.service.config import ServiceConfig
from rcds.service.presence import Presence

log = logging.getLogger("rcds.service.partner")


class PartnerReplicas:
    """Keeps replicas of the partner's repositories fresh."""

    def __init__(self, config: ServiceConfig, presence: Presence, clock: Clock = system_clock) -> None:
        self.config = config
        self.presence = presence
        rc = config.replica
        self.enabled = bool(rc.partner_url and rc.partner_repository_url and rc.partner_keys_dir)
        self.dir = config.state_dir / "replicas"
        self.on_new_replica: Callable[[str, Path], None] | None = None
        self.on_revision: Callable[[bytes], None] | None = None
        """Called with the signed manifest when a pull brought a new revision (announcements)."""
        self.last_results: dict[str, SnapshotResult | RcdsError] = {}
        self.last_pull: float | None = None
        """When the last pull ended (Unix time)."""
        self.partner_reachable: bool | None = None
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._replicator = Replicator(workers=4, clock=lambda: utc_now(clock))
        if self.dir.is_dir():
            for d in sorted(self.dir.iterdir()):
                if (d / ".cvmfspublished").exists() and d.name not in config.repositories:
                    self._adopt(d.name)

    def _adopt(self, name: str) -> None:
        with self._lock:
            if name in self._names:
                return
            self._names.append(name)
        self.presence.add_repository(name, self.dir / name, own=False)
        if self.on_new_replica is not None:
            self.on_new_replica(name, self.dir / name)

    def names(self) -> list[str]:
        """Replicated repositories."""
        with self._lock:
            return list(self._names)

    def publics(self) -> dict[str, Path]:
        """Replica name -> its served tree (only those with a published revision)."""
        return {n: self.dir / n for n in self.names() if (self.dir / n / ".cvmfspublished").exists()}

    def partner_repositories(self) -> list[str]:
        """The partner's repository names from its ``/pubapi/config`` (empty when unreachable)."""
        url = f"{self.config.replica.partner_url}/pubapi/config"
        kw: dict[str, object] = {}
        tls = self.config.tls
        if url.startswith("https://") and tls is not None and (tls.ca_dir or tls.ca_file):
            ctx = ssl.create_default_context(cadata=TrustStore.load(tls.ca_dir, tls.ca_file).pem())
            kw["ssl_context"] = ctx
        try:
            with urllib3.PoolManager(timeout=urllib3.Timeout(5, 10), retries=False, **kw) as pool:  # type: ignore[arg-type]
                resp = pool.request("GET", url)
        except urllib3.exceptions.HTTPError as exc:
            log.warning("partner %s unreachable: %s", url, exc)
            return []
        text = resp.data.decode("utf-8", "replace").strip()
        if resp.status != 200 or not text.startswith("repos:"):
            log.warning("partner %s answered %s %r", url, resp.status, text[:80])
            return []
        return [n for n in text[len("repos:") :].split(",") if n and n not in self.config.repositories]

    def pull(self) -> dict[str, SnapshotResult | RcdsError]:
        """Snapshot every partner repository once (errors are logged and returned, not raised)."""
        rc = self.config.replica
        assert rc.partner_repository_url is not None and rc.partner_keys_dir is not None
        listed = self.partner_repositories()
        self.partner_reachable = bool(listed)
        known = self.names()
        names = listed or known
        specs = []
        for name in names:
            key = rc.partner_keys_dir / f"{name}.pub"
            if not key.exists():
                log.warning("no master key %s for partner repository %s; not replicating it", key, name)
                continue
            url = rc.partner_repository_url.replace("@fqrn@", name)
            specs.append(ReplicaSpec(name, url, key, self.dir / name))
        before = {s.fqrn: _manifest(self.dir / s.fqrn) for s in specs}
        results = dict(zip([s.fqrn for s in specs], self._replicator.pull_all(specs), strict=True))
        for name, res in results.items():
            if isinstance(res, SnapshotResult):
                self._adopt(name)
                self.presence.refresh(name)
                after = _manifest(self.dir / name)
                if self.on_revision is not None and after is not None and after != before.get(name):
                    self.on_revision(after)
        self.last_results = results
        self.last_pull = time.time()
        return results


def _manifest(root: Path) -> bytes | None:
    try:
        return (root / ".cvmfspublished").read_bytes()
    except OSError:
        return None
