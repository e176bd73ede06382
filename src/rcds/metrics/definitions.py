"""The metric families of each role, created on a caller's registry (one registry per process part).

Names follow Prometheus conventions: ``rcds_`` prefix, ``_total`` for counters, base units
(seconds, bytes). Each role gets a small dataclass of its metrics, so code records with
``m.requests.labels(...).inc()`` and tests can make as many independent registries as they like.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Request latency buckets (seconds): API answers are milliseconds, uploads up to minutes."""
PUBLISH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Publish duration buckets (seconds), upload end to PRESENT."""


def new_registry() -> CollectorRegistry:
    """A registry of its own (never the process-global default one)."""
    return CollectorRegistry(auto_describe=True)


@dataclass(frozen=True)
class HttpMetrics:
    """An HTTP server's requests: counts and latencies per verb, method and status; bytes in and out."""

    requests: Counter
    latency: Histogram
    bytes_in: Counter
    bytes_out: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, server: str) -> HttpMetrics:
        """``server`` names the HTTP server in the metric names (``api``, ``repo``)."""
        p = f"rcds_{server}"
        return cls(
            Counter(f"{p}_requests", "Requests answered", ["verb", "method", "status"], registry=registry),
            Histogram(
                f"{p}_request_seconds",
                "Time to answer a request",
                ["verb", "method", "status"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            Counter(f"{p}_received_bytes", "Request body bytes received", ["verb"], registry=registry),
            Counter(f"{p}_sent_bytes", "Response body bytes sent", ["verb"], registry=registry),
        )

    def observe(
        self, verb: str, method: str, status: int, seconds: float | None, received: int, sent: int
    ) -> None:
        """Record one answered request (``seconds`` None: its latency is not known)."""
        code = str(status)
        self.requests.labels(verb, method, code).inc()
        if seconds is not None:
            self.latency.labels(verb, method, code).observe(seconds)
        if received:
            self.bytes_in.labels(verb).inc(received)
        if sent:
            self.bytes_out.labels(verb).inc(sent)

    def observe_repository_request(
        self, target: str, method: str, status: int, sent: int, names: Container[str]
    ) -> None:
        """Record one request a repository server answered: the verb is the repository of
        ``/cvmfs/<name>/...`` when it is one of ``names``, else ``other`` (bounded label values)."""
        parts = target.split("?", 1)[0].split("/")
        name = parts[2] if len(parts) > 2 and parts[1] == "cvmfs" else ""
        self.observe(name if name in names else "other", method, status, None, 0, sent)


@dataclass(frozen=True)
class PublishMetrics:
    """Publishes (durations, outcomes, bytes ingested) and cleanups of a publishing server."""

    duration: Histogram
    outcomes: Counter
    ingested: Counter
    cleanup_runs: Counter
    cleanup_removed: Counter
    cleanup_freed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PublishMetrics:
        """The publish and cleanup families on ``registry``."""
        return cls(
            Histogram(
                "rcds_publish_seconds",
                "Upload end to PRESENT, per repository",
                ["repository"],
                buckets=PUBLISH_BUCKETS,
                registry=registry,
            ),
            Counter("rcds_publishes", "Publishes by outcome", ["repository", "outcome"], registry=registry),
            Counter("rcds_ingested_bytes", "Tarball bytes published", ["repository"], registry=registry),
            Counter("rcds_cleanup_runs", "Cleanups run", ["repository", "outcome"], registry=registry),
            Counter(
                "rcds_cleanup_removed_cids", "CIDs removed by cleanup", ["repository"], registry=registry
            ),
            Counter(
                "rcds_cleanup_freed_bytes", "Bytes freed by cleanup gc", ["repository"], registry=registry
            ),
        )


@dataclass(frozen=True)
class CacheMetrics:
    """A client cache (mount daemon, replica): hits, misses and evictions."""

    hits: Counter
    misses: Counter
    evictions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CacheMetrics:
        """The cache families on ``registry``."""
        return cls(
            Counter("rcds_cache_hits", "Objects found in the local cache", registry=registry),
            Counter("rcds_cache_misses", "Objects fetched because the cache lacked them", registry=registry),
            Counter("rcds_cache_evictions", "Objects evicted from the cache", registry=registry),
        )


@dataclass(frozen=True)
class FailoverMetrics:
    """Failovers of a client from one server or proxy to the next."""

    failovers: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FailoverMetrics:
        """The failover family on ``registry`` (labels: the host and proxy that failed)."""
        return cls(
            Counter(
                "rcds_failovers", "Failovers away from a host/proxy", ["host", "proxy"], registry=registry
            )
        )

    def failed(self, host: str, proxy: str | None) -> None:
        """Count a failover away from ``host`` through ``proxy`` (``DIRECT`` when none)."""
        self.failovers.labels(host, proxy or "DIRECT").inc()


GaugeReader = Callable[[], Mapping[str, float]]
"""Returns label value -> gauge value, read at scrape time."""


Family = GaugeMetricFamily | CounterMetricFamily


class LiveGauges(Collector):
    """Metrics read from live state at each scrape: name -> (help, label name or None, reader).

    A reader with no label returns ``{"": value}``. Reading happens in the scraping thread, so
    readers must be cheap and thread safe (counters and lengths, never a disk walk).
    :meth:`add_counter` exposes a plain integer some code keeps anyway (e.g. a cache's hit count
    kept by code that must not import Prometheus) as a counter.
    """

    def __init__(self) -> None:
        self._metrics: list[tuple[str, str, str | None, GaugeReader, bool]] = []

    def add(self, name: str, help_text: str, label: str | None, reader: GaugeReader) -> None:
        """Add a gauge family."""
        self._metrics.append((name, help_text, label, reader, False))

    def add_counter(self, name: str, help_text: str, label: str | None, reader: GaugeReader) -> None:
        """Add a counter family (``name`` without ``_total``; values must only grow)."""
        self._metrics.append((name, help_text, label, reader, True))

    @staticmethod
    def _family(name: str, help_text: str, label: str | None, counter: bool) -> Family:
        labels = [label] if label else None
        if counter:
            return CounterMetricFamily(name, help_text, labels=labels)
        return GaugeMetricFamily(name, help_text, labels=labels)

    def collect(self) -> Iterable[Family]:
        """One family per metric (called by the registry)."""
        for name, help_text, label, reader, counter in self._metrics:
            fam = self._family(name, help_text, label, counter)
            for key, value in reader().items():
                fam.add_metric([key] if label else [], float(value))
            yield fam

    def describe(self) -> Iterable[Family]:
        """The families without samples (so registering checks names without reading state)."""
        for name, help_text, label, _, counter in self._metrics:
            yield self._family(name, help_text, label, counter)
