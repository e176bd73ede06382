"""The Fetcher through a real Squid proxy on loopback: caching, proxy fail-over, error pages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from rcds.errors import IntegrityError
from rcds.net import DIRECT, FetchError, Outcome, Timeouts

from netkit import FAST, make_fetcher

if TYPE_CHECKING:
    from conftest import FakeClock, FakeSleep, RepoServer, Squid

    MakeServer = Callable[[], RepoServer]
    MakeSquid = Callable[[], Squid]

pytestmark = pytest.mark.timeout(60)

SETTINGS = FAST._replace(timeout=Timeouts(3, 3), timeout_direct=Timeouts(3, 3), proxy_reset_after=300)
fetcher = functools.partial(make_fetcher, settings=SETTINGS)
BODY = b"0123456789abcdef" * 64


def hosts(make_server: MakeServer, n: int, path: str, data: bytes = BODY) -> list[RepoServer]:
    out = [make_server() for _ in range(n)]
    for s in out:
        s.put(path, data)
    return out


def test_fetch_through_squid(
    make_server: MakeServer, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = hosts(make_server, 1, "data/sq/plain")
    f = fetcher([h1], clock, sleep, squid.url)
    assert f.fetch("data/sq/plain") == BODY
    lines = squid.wait_logged(f"{h1.base}/data/sq/plain")
    assert len(lines) == 1 and "/200 " in lines[0]
    seen = h1.requests[0]
    assert "rcds-test-squid" in seen.headers.get("via", "")
    assert seen.headers["user-agent"].startswith("rcds/")
    # Objects carry a long max-age: the second request is a cache hit.
    assert f.fetch("data/sq/plain") == BODY
    lines = squid.wait_logged(f"{h1.base}/data/sq/plain", 2)
    assert "HIT" in lines[1] and h1.count("data/sq/plain") == 1


def test_bad_data_cached_in_squid_is_refreshed_by_the_no_cache_retry(
    make_server: MakeServer, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = hosts(make_server, 1, "data/sq/bad")
    h1.fail("wrong_body", times=1)  # the proxy caches a corrupt copy

    def validate(body: bytes) -> bytes:
        if body != BODY:
            raise IntegrityError("hash mismatch")
        return body

    f = fetcher([h1], clock, sleep, squid.url)
    assert f.fetch("data/sq/bad", validate=validate) == BODY
    assert [r.headers.get("pragma") for r in h1.requests] == [None, "no-cache"]
    # The refreshed, good copy now sits in the cache.
    assert fetcher([h1], clock, sleep, squid.url).fetch("data/sq/bad", validate=validate) == BODY
    assert h1.count("data/sq/bad") == 2
    lines = squid.wait_logged(f"{h1.base}/data/sq/bad", 3)
    assert len(lines) == 3 and "HIT" in lines[2]


def test_dead_host_behind_squid_is_a_proxy_error_then_next_host(
    make_server: MakeServer, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = hosts(make_server, 2, "data/sq/deadhost")
    h1.stop()
    f = fetcher([h1, h2], clock, sleep, squid.url)
    assert f.fetch("data/sq/deadhost") == BODY
    recs = {r.url: r for r in f.status()}
    assert "from the proxy" in (recs[h1.base].last_error or "")
    assert recs[h2.base].current
    assert sleep.calls == []  # an error page is not retried on the same pair
    assert any(
        "/503 " in line or "/502 " in line for line in squid.wait_logged(f"{h1.base}/data/sq/deadhost")
    )


def test_all_hosts_dead_behind_squid(
    make_server: MakeServer, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = hosts(make_server, 2, "data/sq/alldead")
    h1.stop()
    h2.stop()
    with pytest.raises(FetchError) as info:
        fetcher([h1, h2], clock, sleep, squid.url).fetch("data/sq/alldead")
    attempts = info.value.attempts
    assert [(a.host, a.proxy) for a in attempts] == [(h1.base, squid.url), (h2.base, squid.url)]
    assert all(a.failure.outcome is Outcome.PROXY and "ERR_" in a.failure.reason for a in attempts)
    assert "CVMFS_HTTP_PROXY" in str(info.value)


def test_killed_proxy_fails_over_to_the_next_group_and_sticks_until_reset(
    make_server: MakeServer, squid: Squid, squid_factory: MakeSquid, clock: FakeClock, sleep: FakeSleep
) -> None:
    paths = [f"data/sq/kill{i}" for i in range(4)]
    h1 = make_server()
    for p in paths:
        h1.put(p, BODY)
    doomed = squid_factory()
    f = fetcher([h1], clock, sleep, f"{doomed.url};{squid.url}")
    assert f.fetch(paths[0]) == BODY
    assert doomed.wait_logged(paths[0])
    doomed.stop()
    assert f.fetch(paths[1]) == BODY
    assert squid.wait_logged(paths[1])
    assert len(sleep.calls) == 1  # one retry on the dead proxy, then the next group
    recs = {r.url: r for r in f.status() if r.role == "proxy"}
    assert recs[doomed.url].state == "failed" and "connect" in (recs[doomed.url].last_error or "")
    assert recs[squid.url].current
    # Sticky: no new attempt on the dead proxy...
    assert f.fetch(paths[2]) == BODY
    assert len(sleep.calls) == 1
    # ...until proxy_reset_after has passed: then the first group is tried again.
    clock.advance(300)
    assert f.fetch(paths[3]) == BODY
    assert len(sleep.calls) == 2


def test_dead_proxy_then_direct(
    make_server: MakeServer, dead: str, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = hosts(make_server, 1, "data/sq/direct")
    f = fetcher([h1], clock, sleep, f"{dead};DIRECT", max_retries=0)
    assert f.fetch("data/sq/direct") == BODY
    assert "via" not in h1.requests[0].headers
    assert [r.url for r in f.status() if r.role == "proxy" and r.current] == [DIRECT]


def test_load_balanced_group_member_dies(
    make_server: MakeServer, squid_factory: MakeSquid, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = hosts(make_server, 1, "data/sq/lb")
    a, b = squid_factory(), squid_factory()
    f = fetcher([h1], clock, sleep, f"{a.url}|{b.url}", max_retries=0)
    chosen = next(r.url for r in f.status() if r.role == "proxy" and r.current)
    survivor = b if chosen == a.url else a
    (a if chosen == a.url else b).stop()
    assert f.fetch("data/sq/lb") == BODY
    assert next(r.url for r in f.status() if r.role == "proxy" and r.current) == survivor.url
    assert survivor.wait_logged(f"{h1.base}/data/sq/lb")


def test_fallback_proxy(
    make_server: MakeServer, squid: Squid, dead: str, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = hosts(make_server, 1, "data/sq/fallback")
    f = fetcher([h1], clock, sleep, f"{dead};DIRECT", fallback=squid.url, max_retries=0)
    assert f.proxies.all_groups == ((dead,), (squid.url,))  # DIRECT removed
    assert f.fetch("data/sq/fallback") == BODY
    cur = next(r for r in f.status() if r.role == "proxy" and r.current)
    assert cur.url == squid.url and cur.fallback
    assert squid.wait_logged(f"{h1.base}/data/sq/fallback")


def test_stall_behind_the_proxy_blames_the_proxy(
    make_server: MakeServer, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = hosts(make_server, 2, "data/sq/stall")
    h1.fail("stall", seconds=20)
    f = fetcher([h1, h2], clock, sleep, squid.url, timeout=Timeouts(3, 0.5))
    assert f.fetch("data/sq/stall") == BODY
    recs = {r.url: r for r in f.status()}
    assert "stalled" in (recs[squid.url].last_error or "")
    assert "every proxy failed" in (recs[h1.base].last_error or "")
    assert len(sleep.calls) == 1 and recs[h2.base].current
