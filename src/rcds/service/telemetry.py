"""The service's metrics registry and activity record, and the gauges read from live state.

One :class:`Telemetry` per service: ``/metrics`` renders its registry, the status page reads
its :class:`~rcds.service.activity.Activity`. Gauges (queue length, revision per repository,
...) are read at scrape time from counters the service keeps anyway, never from disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rcds.metrics.definitions import HttpMetrics, LiveGauges, PublishMetrics, new_registry
from rcds.serve.handler import AccessRecord
from rcds.service.activity import Activity

if TYPE_CHECKING:
    from rcds.service.core import Service


class Telemetry:
    """Metrics of the API, of the repository server and of publishing, plus the activity record."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = new_registry()
        self.api = HttpMetrics.create(self.registry, "api")
        self.repo = HttpMetrics.create(self.registry, "repo")
        self.publish = PublishMetrics.create(self.registry)
        self.activity = Activity(self.publish, clock)
        self.gauges = LiveGauges()
        self.registry.register(self.gauges)
        self._repo_names: Callable[[], Mapping[str, object]] = dict

    def watch(self, service: Service) -> None:
        """Add the gauges that read ``service``'s state at scrape time."""
        act = self.activity
        self.gauges.add(
            "rcds_publish_queue_length", "Uploads waiting for a repository", None,
            lambda: {"": service.queue.queued()},
        )  # fmt: skip
        self.gauges.add(
            "rcds_publishes_in_flight", "Publishes running", None, lambda: {"": len(act.in_flight()[1])}
        )
        self.gauges.add(
            "rcds_uploads_in_flight", "Uploads being received", None, lambda: {"": len(act.in_flight()[0])}
        )

        def per_repo(field: str) -> Callable[[], dict[str, float]]:
            return lambda: {s.name: float(getattr(s, field)) for s in service.presence.summaries()}

        for name, text, field in (
            ("rcds_repository_revision", "Newest revision of each repository (own and replicas)", "revision"),
            ("rcds_repository_cids", "CIDs in each repository", "cids"),
            ("rcds_repository_bytes", "Bytes of the files in each repository", "size"),
            ("rcds_repository_published_timestamp_seconds", "When each revision was signed", "published_at"),
        ):
            self.gauges.add(name, text, "repository", per_repo(field))
        self._repo_names = lambda: service.repo_server.repositories if service.repo_server else {}
        self.registry.register(WhitelistMetrics(service.health))

    def repo_access(self, record: AccessRecord) -> None:
        """Count one request answered by the repository server (its body bytes sent)."""
        self.repo.observe_repository_request(
            record.target, record.method, record.status, record.sent, self._repo_names()
        )


class WhitelistMetrics(Collector):
    """The whitelists' expiry and re-sign results, read from :meth:`Service.health` at each scrape.

    Labelled by ``repository`` and ``role`` (``own``: re-signed by this service; ``replica``: a
    partner's, passed on). An alert on ``rcds_whitelist_needs_resign == 1`` together with
    ``rcds_whitelist_resign_failures_total`` fires days before clients would refuse a repository.
    """

    def __init__(self, health: Callable[[], Mapping[str, object]]) -> None:
        self._health = health

    def collect(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """The families, with one sample per whitelist."""
        labels = ["repository", "role"]
        expiry = GaugeMetricFamily(
            "rcds_whitelist_expiry_timestamp_seconds", "When the whitelist expires (Unix time)", labels=labels
        )
        left = GaugeMetricFamily(
            "rcds_whitelist_seconds_left",
            "Seconds until the whitelist expires (negative: expired)",
            labels=labels,
        )
        due = GaugeMetricFamily(
            "rcds_whitelist_needs_resign",
            "1 when less than a third of the validity is left or expired",
            labels=labels,
        )
        resigns = CounterMetricFamily(
            "rcds_whitelist_resigns", "Whitelists re-signed by this process", labels=labels
        )
        failures = CounterMetricFamily(
            "rcds_whitelist_resign_failures",
            "Checks at which a due whitelist could not be re-signed (master key missing or unusable)",
            labels=labels,
        )
        problems = GaugeMetricFamily(
            "rcds_problems", "Problems listed by /pubapi/status (0 when all is well)"
        )
        health = self._health()
        for role, key in (("own", "whitelists"), ("replica", "replica_whitelists")):
            entries: list[Mapping[str, object]] = health.get(key, [])  # type: ignore[assignment]
            for e in entries:
                values = [str(e["repository"]), role]
                expires = e.get("expires_ts")
                if isinstance(expires, int | float):
                    expiry.add_metric(values, float(expires))
                left.add_metric(values, float(e["seconds_left"]))  # type: ignore[arg-type]
                due.add_metric(values, 0.0 if e["state"] == "ok" else 1.0)
                if role == "own":
                    resigns.add_metric(values, float(e.get("resigns", 0)))  # type: ignore[arg-type]
                    failures.add_metric(values, float(e.get("resign_failures", 0)))  # type: ignore[arg-type]
        problem_list: list[object] = health.get("problems", [])  # type: ignore[assignment]
        problems.add_metric([], float(len(problem_list)))
        return [expiry, left, due, resigns, failures, problems]

    def describe(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """Nothing to describe ahead (the families are read at scrape time)."""
        return []
