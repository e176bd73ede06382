"""``rcds mount --metrics-port``: the daemon's ``/metrics``, parsed by Prometheus' own parser."""

from __future__ import annotations

import errno
import re
from typing import Any

import pytest

from mountkit import wait_for
from testkit import NAME, scrape


def test_metrics_count_misses_failovers_and_io_errors_and_show_the_revision(
    site: Any, mount_site: Any
) -> None:
    m = mount_site("--metrics-port", "0")
    assert wait_for(lambda: "metrics at http://" in m.proc.logs(), timeout=10)
    found = re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", m.proc.logs())
    assert found is not None
    url = found.group(1)
    assert (m.mp / "sw/g/c1/a/hello.txt").read_bytes() == b"hello rcds\n"  # not cached: a miss
    samples = scrape(url)
    repo = (("repository", NAME),)
    assert samples[("rcds_cache_misses_total", repo)] >= 1
    assert samples[("rcds_repository_revision", repo)] == site.manifest().revision
    assert ("rcds_cache_hits_total", (("cache", "local"), ("repository", NAME))) in samples
    assert samples[("rcds_mount_io_errors_total", repo)] == 0
    # opening an uncached file fetched its directory's other files in the background (one batch)
    assert wait_for(lambda: scrape(url)[("rcds_cache_misses_total", repo)] >= 3, timeout=10)
    for srv in site.servers:  # every server down: the client fails over, then gives up
        srv.stop()
    with pytest.raises(OSError) as exc:
        (m.mp / "sw/g/c1/b/c/d.txt").read_bytes()  # a directory nothing was read from
    assert exc.value.errno == errno.EIO
    samples = scrape(url)
    failovers = {k[1]: v for k, v in samples.items() if k[0] == "rcds_failovers_total"}
    hosts = {dict(labels)["host"] for labels in failovers}
    assert hosts & {u.rsplit("/cvmfs/", 1)[0] for u in site.urls} or hosts & set(site.urls), failovers
    assert sum(failovers.values()) >= 1
    assert samples[("rcds_mount_io_errors_total", repo)] >= 1
