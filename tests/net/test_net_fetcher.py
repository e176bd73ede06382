"""The Fetcher against real loopback HTTP servers, without a proxy."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from rcds.errors import IntegrityError, NetworkError
from rcds.format.compression import StreamVerifier, make_object
from rcds.net import DIRECT, FetchError, Outcome, Timeouts

from netkit import make_fetcher

if TYPE_CHECKING:
    from conftest import FakeClock, FakeSleep, RepoServer

    MakeServer = Callable[[], RepoServer]

pytestmark = pytest.mark.timeout(60)

BODY = b"the quick brown fox jumps over the lazy dog\n" * 50


def expect(data: bytes) -> Callable[[bytes], int]:
    """A validator accepting exactly ``data``; returns its length."""

    def validate(body: bytes) -> int:
        if body != data:
            raise IntegrityError("hash mismatch", "test object")
        return len(body)

    return validate


def servers(
    make_server: MakeServer, n: int, path: str = "data/ab/obj", data: bytes = BODY
) -> list[RepoServer]:
    out = [make_server() for _ in range(n)]
    for s in out:
        s.put(path, data)
    return out


def test_fetch_direct_with_stock_headers_and_keep_alive(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    (s,) = servers(make_server, 1)
    s.put(".cvmfspublished", b"manifest")
    with make_fetcher([s], clock, sleep) as f:
        assert f.fetch("data/ab/obj") == BODY
        assert f.fetch("/.cvmfspublished", validate=lambda b: b.decode()) == "manifest"
    first, second = s.requests
    assert first.path == "data/ab/obj"
    assert first.headers["user-agent"].startswith("rcds/")
    assert first.headers["connection"].lower() == "keep-alive"
    assert "pragma" not in first.headers and "cache-control" not in first.headers
    assert first.client_port == second.client_port, "the connection was not kept alive"
    assert sleep.calls == []


def test_paths_are_quoted(make_server: MakeServer, clock: FakeClock, sleep: FakeSleep) -> None:
    (s,) = servers(make_server, 1, "dir with space/x#y", b"odd")
    with make_fetcher([s], clock, sleep) as f:
        assert f.fetch("dir with space/x#y") == b"odd"
    assert s.requests[0].path == "dir%20with%20space/x%23y"


def test_killed_host_fails_over_to_the_next_and_sticks(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj") == BODY
    h1.stop()
    assert f.fetch("data/ab/obj") == BODY
    assert h2.count("data/ab/obj") == 1
    assert len(sleep.calls) == 1 and 0 <= sleep.calls[0] <= 0.5  # one retry with back-off
    recs = {r.url: r for r in f.status() if r.role == "host"}
    assert recs[h1.base].state == "failed" and "refused" in (recs[h1.base].last_error or "")
    assert recs[h2.base].current
    # Sticky: the next request goes to h2 straight away.
    assert f.fetch("data/ab/obj") == BODY
    assert len(sleep.calls) == 1 and h2.count("data/ab/obj") == 2


def test_404_on_host_1_goes_to_host_2_without_retry(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = make_server(), make_server()
    h2.put("data/only/h2", b"here")
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/only/h2") == b"here"
    assert (h1.count("data/only/h2"), h2.count("data/only/h2")) == (1, 1)
    assert sleep.calls == []


@pytest.mark.parametrize("status", [500, 503, 400])
def test_server_errors_fail_over(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep, status: int
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("status", status=status)
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj") == BODY
    assert h1.count("data/ab/obj") == 1 and sleep.calls == []


def test_429_is_retried_on_the_same_host(make_server: MakeServer, clock: FakeClock, sleep: FakeSleep) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("status", status=429, times=1)
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj") == BODY
    assert (h1.count("data/ab/obj"), h2.count("data/ab/obj")) == (2, 0)
    assert len(sleep.calls) == 1


def test_bad_data_is_retried_with_no_cache_then_next_host(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("wrong_body")
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj", validate=expect(BODY)) == len(BODY)
    plain, retry = h1.requests
    assert "pragma" not in plain.headers
    assert retry.headers["pragma"] == "no-cache" and retry.headers["cache-control"] == "no-cache"
    assert h2.count("data/ab/obj") == 1 and h2.requests[0].headers["pragma"] == "no-cache"
    assert sleep.calls == []  # corrupt data is no reason to wait
    assert "bad data" in (next(r for r in f.status() if r.url == h1.base).last_error or "")


def test_bad_data_once_is_fixed_by_the_no_cache_retry(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("wrong_body", times=1)
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj", validate=expect(BODY)) == len(BODY)
    assert (h1.count("data/ab/obj"), h2.count("data/ab/obj")) == (2, 0)


def test_validator_errors_that_are_not_integrity_errors_propagate(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    (h1,) = servers(make_server, 1)

    def broken(body: bytes) -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        make_fetcher([h1], clock, sleep).fetch("data/ab/obj", validate=broken)


def test_truncated_body_is_a_short_transfer(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("truncate")
    f = make_fetcher([h1, h2], clock, sleep)
    assert f.fetch("data/ab/obj") == BODY
    assert h1.count("data/ab/obj") == 2  # first try + one retry
    h2.fail("truncate")
    with pytest.raises(FetchError) as info:
        make_fetcher([h1, h2], clock, sleep).fetch("data/ab/obj")
    reasons = [a.failure.reason for a in info.value.attempts]
    assert len(reasons) == 4 and all("short transfer" in r for r in reasons)
    assert f"of {len(BODY)}" in reasons[0]


def test_stalled_body_times_out_and_fails_over(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("stall", seconds=20)
    f = make_fetcher([h1, h2], clock, sleep, timeout_direct=Timeouts(2, 0.5), max_retries=0)
    t0 = time.monotonic()
    assert f.fetch("data/ab/obj") == BODY
    assert time.monotonic() - t0 < 5
    rec = next(r for r in f.status() if r.url == h1.base)
    assert "stalled" in (rec.last_error or "") and "0.5 s" in (rec.last_error or "")


def test_slow_trickle_hits_the_low_speed_limit(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.fail("trickle", seconds=0.1)  # 8 bytes every 0.1 s: never stalls, far too slow
    f = make_fetcher(
        [h1, h2], clock, sleep, timeout_direct=Timeouts(2, 0.5), low_speed_limit=1000, max_retries=0
    )
    t0 = time.monotonic()
    assert f.fetch("data/ab/obj") == BODY
    assert time.monotonic() - t0 < 5
    assert "too slow" in (next(r for r in f.status() if r.url == h1.base).last_error or "")


def test_dropped_connection_is_retried(make_server: MakeServer, clock: FakeClock, sleep: FakeSleep) -> None:
    (h1,) = servers(make_server, 1)
    h1.fail("close", times=1)
    assert make_fetcher([h1], clock, sleep).fetch("data/ab/obj") == BODY
    assert h1.count("data/ab/obj") == 2 and len(sleep.calls) == 1


def test_all_hosts_dead_raises_network_error_listing_tries(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2)
    h1.stop()
    h2.stop()
    f = make_fetcher([h1, h2], clock, sleep, max_retries=2, backoff_init=1, backoff_max=1.5)
    with pytest.raises(NetworkError) as info:
        f.fetch("data/ab/obj")
    err = info.value
    assert isinstance(err, FetchError) and not err.not_found
    assert [a.host for a in err.attempts] == [h1.base] * 3 + [h2.base] * 3
    assert all(a.proxy == DIRECT and a.failure.outcome is Outcome.HOST for a in err.attempts)
    text = str(err)
    assert h1.base in text and h2.base in text and "refused" in text
    assert "What to check" in text and "CVMFS_SERVER_URL" in text
    # Back-off: random in [0, init], then doubled, capped at max; reset for the next host.
    assert len(sleep.calls) == 4
    assert 0 <= sleep.calls[0] <= 1 and sleep.calls[1] == min(2 * sleep.calls[0], 1.5)
    assert {r.state for r in f.status() if r.role == "host"} == {"failed"}


def test_missing_everywhere_is_not_found(make_server: MakeServer, clock: FakeClock, sleep: FakeSleep) -> None:
    h1, h2 = make_server(), make_server()
    with pytest.raises(FetchError) as info:
        make_fetcher([h1, h2], clock, sleep).fetch("data/no/such")
    assert info.value.not_found and "missing on every server" in str(info.value)
    assert len(info.value.attempts) == 2


def test_sticky_host_failover_and_reset_after(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = servers(make_server, 2, "data/common")
    h2.put("data/only-h2", b"2")
    f = make_fetcher([h1, h2], clock, sleep, host_reset_after=100)
    assert f.fetch("data/only-h2") == b"2"  # 404 on h1 -> h2
    clock.advance(99)
    f.fetch("data/common")
    assert (h1.count("data/common"), h2.count("data/common")) == (0, 1)
    clock.advance(1)
    f.fetch("data/common")
    assert (h1.count("data/common"), h2.count("data/common")) == (1, 1)
    assert next(r for r in f.status() if r.current and r.role == "host").url == h1.base


def test_probe_orders_hosts_by_latency_and_reprobes_dead_ones(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    slow, fast, dead = servers(make_server, 3, ".cvmfspublished", b"manifest")
    slow.fail("delay", seconds=0.3)
    dead.stop()
    f = make_fetcher([slow, fast, dead], clock, sleep, host_reset_after=600)
    lat = f.probe()
    assert lat[dead.base] is None
    assert lat[fast.base] is not None and lat[slow.base] is not None and lat[slow.base] >= 0.3
    assert f.host_order() == [fast.base, slow.base, dead.base]
    slow.clear_faults()
    assert f.fetch(".cvmfspublished") == b"manifest"
    assert fast.count(".cvmfspublished") == 2  # probe + fetch
    recs = {r.url: r for r in f.status()}
    assert recs[dead.base].state == "failed" and (recs[dead.base].last_error or "").startswith("probe:")
    assert recs[fast.base].current and recs[fast.base].latency == lat[fast.base]
    # The dead host comes back; it is probed again once its failure delay is over.
    dead.start()
    f.fetch(".cvmfspublished")
    assert dead.count(".cvmfspublished") == 0
    clock.advance(600)
    f.fetch(".cvmfspublished")
    assert dead.count(".cvmfspublished") >= 1  # the re-probe (and maybe the fetch: it is fast now)
    assert f.host_order()[-1] == slow.base
    assert f.status()[0].latency is not None
    assert {r.url: r.state for r in f.status() if r.role == "host"}[dead.base] == "ok"


def test_fetch_to_file_with_a_stream_verifier(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    content = bytes(range(256)) * 2000
    obj = make_object(content)
    h1, h2 = servers(make_server, 2, obj.hash.object_name(), obj.data)
    h1.fail("wrong_body")
    f = make_fetcher([h1, h2], clock, sleep)
    out = io.BytesIO(b"prefix:")
    out.seek(0, io.SEEK_END)
    n = f.fetch_to_file(obj.hash.object_name(), out, verifier=lambda: StreamVerifier(obj.hash))
    assert out.getvalue() == b"prefix:" + obj.data and n == len(obj.data)
    plain = io.BytesIO()
    f.fetch_to_file(
        obj.hash.object_name(), plain, verifier=lambda: StreamVerifier(obj.hash), store_output=True
    )
    assert plain.getvalue() == content
    assert h1.count(obj.hash.object_name()) == 2  # plain + no-cache, then sticky on h2


def test_max_size(make_server: MakeServer, clock: FakeClock, sleep: FakeSleep) -> None:
    (h1,) = servers(make_server, 1)
    with pytest.raises(FetchError, match="exceeds the limit"):
        make_fetcher([h1], clock, sleep).fetch("data/ab/obj", max_size=10)


def test_concurrent_fetches_share_the_fetcher(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    h1, h2 = make_server(), make_server()
    for i in range(40):
        for s in (h1, h2):
            s.put(f"data/{i}", str(i).encode() * 100)
    h1.fail("status", status=503, times=5)
    f = make_fetcher([h1, h2], clock, sleep)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, 40, 8):
                results[i] = f.fetch(f"data/{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == {i: str(i).encode() * 100 for i in range(40)}
