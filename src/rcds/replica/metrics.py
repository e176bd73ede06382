"""``/metrics`` of ``rcds replica run``: pulls, what they fetched, revisions, the whitelists served
(a stratum 1 only passes on its upstream's: an alert here says the upstream must re-sign), and the
requests served."""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rcds.errors import RcdsError
from rcds.metrics.definitions import PUBLISH_BUCKETS, HttpMetrics, new_registry
from rcds.replica.snapshot import SnapshotResult
from rcds.repo.whitelist_age import assess_tree


class ReplicaMetrics:
    """The metric families of a stratum 1 process, on a registry of its own."""

    def __init__(
        self,
        names: Container[str],
        registry: CollectorRegistry | None = None,
        replicas: Mapping[str, Path] | None = None,
    ) -> None:
        self.registry = registry or new_registry()
        if replicas:
            self.registry.register(ServedWhitelists(replicas))
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


class ServedWhitelists(Collector):
    """``rcds_whitelist_seconds_left`` and ``rcds_whitelist_needs_resign`` of every replica served,
    read from its ``.cvmfswhitelist`` at each scrape."""

    def __init__(self, replicas: Mapping[str, Path]) -> None:
        self.replicas = dict(replicas)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Two families, one sample per replica."""
        left = GaugeMetricFamily(
            "rcds_whitelist_seconds_left", "Seconds until the served whitelist expires", labels=["repository"]
        )
        due = GaugeMetricFamily(
            "rcds_whitelist_needs_resign",
            "1 when the served whitelist has under a third of its validity left (the upstream must re-sign)",
            labels=["repository"],
        )
        now = dt.datetime.now(dt.UTC)
        for name, where in sorted(self.replicas.items()):
            age = assess_tree(name, where, now)
            left.add_metric([name], age.seconds_left)
            due.add_metric([name], 1.0 if age.needs_resign else 0.0)
        return [left, due]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """Nothing ahead: read at scrape time."""
        return []
