"""``/metrics`` of ``rcds replica run``: pulls, what they fetched, revisions, and the requests served."""

from __future__ import annotations

from collections.abc import Container

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rcds.errors import RcdsError
from rcds.metrics.definitions import PUBLISH_BUCKETS, HttpMetrics, new_registry
from rcds.replica.snapshot import SnapshotResult


class ReplicaMetrics:
    """The metric families of a stratum 1 process, on a registry of its own."""

    def __init__(self, names: Container[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self.names = names
        r = self.registry
        self.pulls = Counter("rcds_replica_pulls", "Pulls by outcome", ["repository", "outcome"], registry=r)
        self.pull_seconds = Histogram(
            "rcds_replica_pull_seconds", "Duration of successful pulls", ["repository"],
            buckets=PUBLISH_BUCKETS, registry=r,
        )  # fmt: skip
        self.fetched_bytes = Counter(
            "rcds_replica_fetched_bytes", "Bytes fetched from upstream", ["repository"], registry=r
        )
        self.fetched_objects = Counter(
            "rcds_replica_fetched_objects",
            "Objects and catalogs fetched from upstream",
            ["repository"],
            registry=r,
        )
        self.revision = Gauge("rcds_repository_revision", "Revision served", ["repository"], registry=r)
        self.http = HttpMetrics.create(r, "repo")

    def pulled(self, fqrn: str, result: SnapshotResult | RcdsError) -> None:
        """Record one pull's outcome (a runner's ``on_result``)."""
        if isinstance(result, RcdsError):
            self.pulls.labels(fqrn, "failed").inc()
            return
        self.pulls.labels(fqrn, "ok").inc()
        self.pull_seconds.labels(fqrn).observe(result.seconds)
        self.fetched_bytes.labels(fqrn).inc(result.bytes_fetched)
        self.fetched_objects.labels(fqrn).inc(result.objects_fetched + result.catalogs_fetched)
        self.revision.labels(fqrn).set(result.revision)

    def served(self, target: str, method: str, status: int, sent: int) -> None:
        """Record one request answered by the replica's HTTP server."""
        self.http.observe_repository_request(target, method, status, sent, self.names)
