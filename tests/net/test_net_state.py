"""Sticky fail-over state: proxy groups, host chain, resets, latency order (no network)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from rcds.net import DIRECT, ProxyConfig
from rcds.net.state import FailoverState

if TYPE_CHECKING:
    from conftest import FakeClock

HOSTS = ("http://h1/cvmfs/r", "http://h2/cvmfs/r", "http://h3/cvmfs/r")


def make(
    clock: FakeClock, proxies: str = "DIRECT", fallback: str | None = None, seed: int = 1
) -> FailoverState:
    return FailoverState(
        HOSTS,
        ProxyConfig.parse(proxies, fallback),
        host_reset_after=1800,
        proxy_reset_after=300,
        clock=clock,
        rng=random.Random(seed),
    )


def test_proxy_failover_within_group_then_next_group_then_wraps(clock: FakeClock) -> None:
    st = make(clock, "http://a:1|http://b:1;http://c:1", "http://fb:1")
    assert st.proxy_count == 4
    first = st.route()[1]
    assert first in ("http://a:1", "http://b:1")
    second = st.switch_proxy(first, "refused")
    assert second in ("http://a:1", "http://b:1") and second != first
    assert st.switch_proxy(second, "refused") == "http://c:1"
    assert st.switch_proxy("http://c:1", "refused") == "http://fb:1"
    assert st.switch_proxy("http://fb:1", "refused") in ("http://a:1", "http://b:1")


def test_load_balancing_picks_randomly_within_the_group(clock: FakeClock) -> None:
    picks = {make(clock, "http://a:1|http://b:1|http://c:1", seed=s).route()[1] for s in range(40)}
    assert picks == {"http://a:1", "http://b:1", "http://c:1"}


def test_stale_switch_adopts_the_current_proxy(clock: FakeClock) -> None:
    st = make(clock, "http://a:1;http://b:1")
    assert st.switch_proxy("http://a:1", "x") == "http://b:1"
    # Another request that also failed on a:1 does not skip b:1.
    assert st.switch_proxy("http://a:1", "x") == "http://b:1"
    assert st.current_proxy() == "http://b:1"


def test_proxy_reset_after(clock: FakeClock) -> None:
    st = make(clock, "http://a:1;DIRECT")
    assert st.switch_proxy("http://a:1", "refused") == DIRECT
    clock.advance(299)
    assert st.route()[1] == DIRECT
    clock.advance(1)
    assert st.route()[1] == "http://a:1"


def test_host_failover_is_sticky_and_resets(clock: FakeClock) -> None:
    st = make(clock)
    assert st.route()[0] == HOSTS[0]
    assert st.switch_host(HOSTS[0], "HTTP 404") == HOSTS[1]
    assert st.switch_host(HOSTS[0], "HTTP 404") == HOSTS[1]  # stale: no double switch
    assert st.switch_host(HOSTS[1], "HTTP 500") == HOSTS[2]
    clock.advance(1000)
    assert st.route()[0] == HOSTS[2]
    clock.advance(800)
    assert st.route()[0] == HOSTS[0]


def test_status_records(clock: FakeClock) -> None:
    st = make(clock, "http://a:1", "http://fb:1")
    st.switch_host(HOSTS[0], "HTTP 503")
    st.switch_proxy("http://a:1", "cannot connect")
    recs = {(r.role, r.url): r for r in st.status()}
    h1 = recs[("host", HOSTS[0])]
    assert (h1.state, h1.current, h1.last_error, h1.retry_in) == ("failed", False, "HTTP 503", 1800)
    assert recs[("host", HOSTS[1])].current
    a = recs[("proxy", "http://a:1")]
    assert (a.state, a.group, a.fallback, a.retry_in) == ("failed", 0, False, 300)
    fb = recs[("proxy", "http://fb:1")]
    assert (fb.state, fb.current, fb.group, fb.fallback) == ("ok", True, 1, True)
    st.mark_ok(HOSTS[0], "http://a:1")
    recs = {(r.role, r.url): r for r in st.status()}
    assert recs[("host", HOSTS[0])].state == "ok"
    assert recs[("host", HOSTS[0])].last_error == "HTTP 503"  # kept for the record


def test_latency_order_and_reprobe_schedule(clock: FakeClock) -> None:
    st = make(clock)
    assert st.hosts_to_reprobe() == []  # never probed
    st.set_latencies({HOSTS[0]: 0.3, HOSTS[1]: None, HOSTS[2]: 0.01}, {HOSTS[1]: "refused"})
    assert st.host_order() == [HOSTS[2], HOSTS[0], HOSTS[1]]
    assert st.route()[0] == HOSTS[2]
    assert st.hosts_to_reprobe() == []
    clock.advance(1800)
    assert st.hosts_to_reprobe() == [HOSTS[1]]
    st.set_latencies({HOSTS[1]: 0.1}, {}, full=False)
    assert st.host_order() == [HOSTS[2], HOSTS[1], HOSTS[0]]
    assert st.hosts_to_reprobe() == []


def test_needs_a_server(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        FailoverState(
            (),
            ProxyConfig.direct(),
            host_reset_after=1,
            proxy_reset_after=1,
            clock=clock,
            rng=random.Random(),
        )
