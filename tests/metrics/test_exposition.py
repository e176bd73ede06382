"""The shared metric definitions, rendered and served, read back with Prometheus' own text parser."""

from __future__ import annotations

import socket

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from rcds.errors import ConfigError
from rcds.metrics.definitions import (
    CacheMetrics,
    FailoverMetrics,
    HttpMetrics,
    LiveGauges,
    PublishMetrics,
    new_registry,
)
from rcds.metrics.exposition import CONTENT_TYPE, render, start_server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as Prometheus' parser reads ``text``."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_role_renders_and_parses() -> None:
    reg = new_registry()
    http = HttpMetrics.create(reg, "api")
    pub = PublishMetrics.create(reg)
    cache = CacheMetrics.create(reg)
    fo = FailoverMetrics.create(reg)
    state = {"a.example.org": 7.0}
    gauges = LiveGauges()
    gauges.add("rcds_repository_revision", "revision", "repository", lambda: state)
    gauges.add("rcds_publish_queue_length", "queue", None, lambda: {"": 3})
    plain = {"hits": 0}  # a counter kept by code that does not import prometheus
    gauges.add_counter("rcds_plain_hits", "hits", None, lambda: {"": plain["hits"]})
    plain["hits"] += 9
    reg.register(gauges)

    http.observe("publish", "POST", 200, 0.2, 1000, 3)
    http.observe("publish", "POST", 413, 0.01, 0, 40)
    http.observe("exists", "GET", 200, None, 0, 8)  # latency unknown: counted, not observed
    pub.duration.labels("a.example.org").observe(1.5)
    cache.hits.inc(5)
    cache.misses.inc()
    cache.evictions.inc(2)
    fo.failed("http://s1:8000", None)
    fo.failed("http://s1:8000", "http://proxy:3128")

    got = samples(render(reg).decode())
    assert got[("rcds_api_requests_total", (("method", "POST"), ("status", "200"), ("verb", "publish")))] == 1
    assert got[("rcds_api_requests_total", (("method", "GET"), ("status", "200"), ("verb", "exists")))] == 1
    assert (
        "rcds_api_request_seconds_count",
        (("method", "GET"), ("status", "200"), ("verb", "exists")),
    ) not in got
    assert got[("rcds_api_received_bytes_total", (("verb", "publish"),))] == 1000
    assert got[("rcds_api_sent_bytes_total", (("verb", "publish"),))] == 43
    assert got[("rcds_publish_seconds_count", (("repository", "a.example.org"),))] == 1
    assert got[("rcds_publish_seconds_bucket", (("le", "2.0"), ("repository", "a.example.org")))] == 1
    assert got[("rcds_publish_seconds_bucket", (("le", "1.0"), ("repository", "a.example.org")))] == 0
    assert got[("rcds_cache_hits_total", ())] == 5
    assert got[("rcds_cache_evictions_total", ())] == 2
    assert got[("rcds_failovers_total", (("host", "http://s1:8000"), ("proxy", "DIRECT")))] == 1
    assert got[("rcds_failovers_total", (("host", "http://s1:8000"), ("proxy", "http://proxy:3128")))] == 1
    assert got[("rcds_repository_revision", (("repository", "a.example.org"),))] == 7
    assert got[("rcds_publish_queue_length", ())] == 3
    assert got[("rcds_plain_hits_total", ())] == 9
    state["a.example.org"] = 8.0  # gauges are read at scrape time
    assert (
        samples(render(reg).decode())[("rcds_repository_revision", (("repository", "a.example.org"),))] == 8
    )


def test_registries_are_independent() -> None:
    a, b = new_registry(), new_registry()
    CacheMetrics.create(a).hits.inc()
    CacheMetrics.create(b)
    assert samples(render(b).decode())[("rcds_cache_hits_total", ())] == 0
    with pytest.raises(ValueError, match="Duplicated"):
        CacheMetrics.create(a)


def test_standalone_server_serves_metrics_on_loopback() -> None:
    reg = new_registry()
    CacheMetrics.create(reg).misses.inc(4)
    srv = start_server(reg, "127.0.0.1", 0)
    try:
        with urllib3.PoolManager(retries=False, timeout=10) as pool:
            r = pool.request("GET", f"http://127.0.0.1:{srv.port}/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].split(";")[0] == CONTENT_TYPE.split(";")[0]
        assert samples(r.data.decode())[("rcds_cache_misses_total", ())] == 4
    finally:
        srv.stop()


def test_standalone_server_on_a_busy_port_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1 port {port}"):
            start_server(new_registry(), "127.0.0.1", port)
