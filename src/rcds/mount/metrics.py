"""``/metrics`` of the mount daemon (``rcds mount --metrics-port``): caches, failovers, revisions.

Everything is read at scrape time from plain counters the client keeps anyway
(objects served by the local cache, the alien cache or the network, as
:class:`~rcds.client.cache.source.CachedSource` counts them; evictions of the
:class:`~rcds.client.cache.local.LocalCache`; the fetcher's
failovers by host and proxy; each mount's revision, open files and I/O errors; the FUSE
requests by opcode), so the client
never imports Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rcds.metrics.definitions import new_registry
from rcds.mount.repomount import RepoMount


class MountCollector(Collector):
    """The families of a mount's repositories, read from ``mounts()`` at each scrape."""

    def __init__(
        self,
        mounts: Callable[[], Mapping[str, RepoMount]],
        requests: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._mounts = mounts
        self._requests = requests

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        """One family per metric."""
        mounts = dict(self._mounts())
        hits = CounterMetricFamily(
            "rcds_cache_hits", "Objects served by a cache (local or alien)", labels=["repository", "cache"]
        )
        misses = CounterMetricFamily(
            "rcds_cache_misses", "Objects fetched because no cache had them", labels=["repository"]
        )
        evictions = CounterMetricFamily(
            "rcds_cache_evictions", "Objects evicted from the cache", labels=["repository"]
        )
        failovers = CounterMetricFamily(
            "rcds_failovers", "Failovers away from a host/proxy", labels=["repository", "host", "proxy"]
        )
        revision = GaugeMetricFamily("rcds_repository_revision", "Revision mounted", labels=["repository"])
        open_files = GaugeMetricFamily(
            "rcds_mount_open_files", "Files being read (file objects kept per inode)", labels=["repository"]
        )
        requests = CounterMetricFamily(
            "rcds_mount_requests", "FUSE requests received from the kernel", labels=["opcode"]
        )
        for opcode, n in sorted((self._requests() if self._requests is not None else {}).items()):
            requests.add_metric([opcode], n)
        io_errors = CounterMetricFamily("rcds_mount_io_errors", "Reads answered EIO", labels=["repository"])
        for name, m in sorted(mounts.items()):
            served = m.repo.source.stats
            hits.add_metric([name, "local"], served["local"])
            hits.add_metric([name, "alien"], served["alien"])
            misses.add_metric([name], served["network"])
            evictions.add_metric([name], m.repo.cache.evictions)
            for (host, proxy), n in sorted(m.repo.fetcher.failovers().items()):
                failovers.add_metric([name, host, proxy], n)
            revision.add_metric([name], m.applied)
            open_files.add_metric([name], m.open_files)
            io_errors.add_metric([name], m.io_errors)
        return [hits, misses, evictions, failovers, revision, open_files, io_errors, requests]

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        """Nothing ahead: the families are read at scrape time."""
        return []


def mount_registry(
    mounts: Callable[[], Mapping[str, RepoMount]], requests: Callable[[], Mapping[str, int]] | None = None
) -> CollectorRegistry:
    """A registry holding :class:`MountCollector` (``requests``: FUSE requests by opcode)."""
    registry = new_registry()
    registry.register(MountCollector(mounts, requests))
    return registry
