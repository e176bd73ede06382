"""Fetcher.fetch_many: HTTP/1.1 pipelining against rcds.serve, Squid and raw fault servers."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.errors import IntegrityError
from rcds.net import Fetcher, FetchError, Outcome, ProxyConfig, Timeouts
from rcds.serve.http import AccessRecord, RepositoryServer, make_server

from netkit import FAST, FQRN, response, target_path

if TYPE_CHECKING:
    from conftest import FakeClock, FakeSleep, RepoServer, Squid
    from netkit import RawConn, RawServer

    MakeRaw = Callable[[Callable[[RawConn], None]], RawServer]
    MakeServer = Callable[[], RepoServer]

pytestmark = pytest.mark.timeout(60)


def content(i: int) -> bytes:
    return f"object {i}\n".encode() * (1 + (i * 37) % 400)


def object_paths(n: int, prefix: str = "") -> list[str]:
    return [f"data/{i % 256:02x}/{prefix}obj{i:05d}" for i in range(n)]


def body_of(path: str) -> bytes:
    return content(int(path.rsplit("obj", 1)[1]))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[int], tuple[RepositoryServer, list[AccessRecord]]]]:
    """The engine's server on loopback with ``n`` objects; also returns its access log."""
    started: list[RepositoryServer] = []

    def make(n: int) -> tuple[RepositoryServer, list[AccessRecord]]:
        root = tmp_path / f"repo{len(started)}"
        root.mkdir()
        for p in object_paths(n):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(body_of(p))
        log: list[AccessRecord] = []
        srv = make_server({FQRN: root}, access_log=log.append)
        srv.start_background()
        started.append(srv)
        return srv, log

    yield make
    for s in started:
        s.stop()


def logged(log: list[AccessRecord], n: int, timeout: float = 5.0) -> int:
    """The access log's length once it has ``n`` records (the server logs after sending)."""
    deadline = time.monotonic() + timeout
    while len(log) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and nothing more arrives
    return len(log)


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The failed attempts the fetcher logged (at DEBUG)."""
    return [r.getMessage() for r in caplog.records if r.name == "rcds.net" and " failed: " in r.getMessage()]


def fetcher(
    bases: Sequence[str], clock: FakeClock, sleep: FakeSleep, proxies: str = "DIRECT", **kw: object
) -> Fetcher:
    return Fetcher(
        list(bases),
        ProxyConfig.parse(proxies),
        FAST._replace(**kw),
        clock=clock,
        sleep=sleep,
        rng=random.Random(0),
    )


def checked(paths: Sequence[str]) -> Callable[[int, bytes], int]:
    """A validator: the body must be the object's content; returns its length."""

    def validate(i: int, body: bytes) -> int:
        if body != body_of(paths[i]):
            raise IntegrityError("content mismatch", paths[i])
        return len(body)

    return validate


def collect(f: Fetcher, paths: Sequence[str], **kw: object) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, n in f.fetch_many(paths, checked(paths), **kw):  # type: ignore[arg-type]
        assert i not in out, f"index {i} yielded twice"
        out[i] = n
    assert sorted(out) == list(range(len(paths)))
    return out


def test_fetch_many_from_rcds_serve(serve: Callable, clock: FakeClock, sleep: FakeSleep) -> None:
    srv, log = serve(600)
    paths = object_paths(600)
    f = fetcher([srv.url_for(FQRN)], clock, sleep)
    out = collect(f, paths)
    assert out == {i: len(body_of(p)) for i, p in enumerate(paths)}
    assert logged(log, 600) == 600 and all(r.status == 200 for r in log)
    assert sleep.calls == [] and all(r.last_error is None for r in f.status())
    assert list(f.fetch_many([], checked([]))) == []


def test_fetch_many_from_several_threads(serve: Callable, clock: FakeClock, sleep: FakeSleep) -> None:
    srv, _ = serve(400)
    paths = object_paths(400)
    f = fetcher([srv.url_for(FQRN)], clock, sleep)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            mine = paths[k::4]
            collect(f, mine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_missing_paths_fail_over_and_missing_everywhere_raises(
    serve: Callable, make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    srv, _ = serve(50)
    paths = object_paths(50)
    other = make_server()
    extra = "data/ee/only-on-the-second"
    other.put(extra, b"second")
    f = fetcher([srv.url_for(FQRN), other.base], clock, sleep)
    batch = [*paths[:20], extra, *paths[20:]]

    def validate(i: int, body: bytes) -> bytes:
        return body

    got = dict(f.fetch_many(batch, validate))
    assert got[20] == b"second" and got[0] == body_of(paths[0]) and len(got) == 51
    assert other.count(extra) == 1
    # Sticky fail-over: the fetcher now uses the second host, which lacks the objects: they
    # are missing there and found again on the first host.
    with pytest.raises(FetchError) as info:
        dict(f.fetch_many(["data/ff/nowhere", *paths[:3]], validate))
    assert info.value.not_found and info.value.path == "data/ff/nowhere"


def test_bad_data_is_retried_with_no_cache(
    make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    s = make_server()
    paths = object_paths(40)
    for p in paths:
        s.put(p, body_of(p))
    s.fail("wrong_body", paths[7], times=1)
    f = fetcher([s.base], clock, sleep)
    collect(f, paths)
    seen = [r for r in s.requests if r.path == paths[7]]
    assert len(seen) == 2 and "pragma" not in seen[0].headers and seen[1].headers["pragma"] == "no-cache"
    assert sleep.calls == []


def test_validator_errors_propagate_and_the_fetcher_stays_usable(
    serve: Callable, clock: FakeClock, sleep: FakeSleep
) -> None:
    srv, _ = serve(100)
    paths = object_paths(100)
    f = fetcher([srv.url_for(FQRN)], clock, sleep)

    def broken(i: int, body: bytes) -> int:
        if i == 10:
            raise KeyError("consumer bug")
        return i

    with pytest.raises(KeyError):
        list(f.fetch_many(paths, broken))
    # Stopping early (closing the generator) is fine too.
    it = f.fetch_many(paths, checked(paths))
    next(it)
    it.close()
    collect(f, paths)


def test_max_size(serve: Callable, clock: FakeClock, sleep: FakeSleep) -> None:
    srv, _ = serve(30)
    paths = object_paths(30)
    big = max(range(30), key=lambda i: len(body_of(paths[i])))
    limit = len(body_of(paths[big])) - 1
    f = fetcher([srv.url_for(FQRN)], clock, sleep)
    with pytest.raises(FetchError, match="exceeds the limit") as info:
        collect(f, paths, max_size=limit)
    assert info.value.path == paths[big]
    # As fetch: the plain attempt, then one with no-cache, both bad data.
    assert [a.failure.outcome for a in info.value.attempts] == [Outcome.BAD_DATA] * 2


def test_dead_first_host_fails_over_then_pipelines(
    serve: Callable, dead: str, clock: FakeClock, sleep: FakeSleep
) -> None:
    srv, log = serve(200)
    paths = object_paths(200)
    f = fetcher([f"{dead}/cvmfs/{FQRN}", srv.url_for(FQRN)], clock, sleep)
    collect(f, paths)
    assert len(sleep.calls) == 1  # one retry on the dead host, then the next one
    assert logged(log, 200) == 200


def test_fetch_many_through_squid(serve: Callable, squid: Squid, clock: FakeClock, sleep: FakeSleep) -> None:
    srv, log = serve(150)
    paths = object_paths(150)
    base = srv.url_for(FQRN)
    f = fetcher([base], clock, sleep, proxies=squid.url)
    collect(f, paths)
    assert logged(log, 150) == 150
    collect(f, paths)  # every object is now a cache hit
    assert logged(log, 151, timeout=0.2) == 150
    lines = squid.wait_logged(f"{base}/data/", 300)
    assert len(lines) == 300 and sum("HIT" in line for line in lines) >= 150


def test_dead_host_behind_squid_fails_over_for_the_whole_batch(
    serve: Callable, squid: Squid, clock: FakeClock, sleep: FakeSleep
) -> None:
    dead_srv, _ = serve(0)
    dead_base = dead_srv.url_for(FQRN)
    dead_srv.stop()
    srv, log = serve(120)
    paths = object_paths(120)
    f = fetcher([dead_base, srv.url_for(FQRN)], clock, sleep, proxies=squid.url)
    collect(f, paths)
    assert logged(log, 120) == 120
    recs = {r.url: r for r in f.status()}
    assert "from the proxy" in (recs[dead_base].last_error or "") and recs[srv.url_for(FQRN)].current
    assert sleep.calls == []  # error pages are not retried on the same pair


def test_routes_that_cannot_be_pipelined_go_one_by_one(dead: str, clock: FakeClock, sleep: FakeSleep) -> None:
    base = dead.replace("http://", "https://") + f"/cvmfs/{FQRN}"
    f = fetcher([base], clock, sleep, max_retries=0)
    with pytest.raises(FetchError) as info:
        list(f.fetch_many(object_paths(5), checked(object_paths(5))))
    assert info.value.path == object_paths(5)[0] and len(info.value.attempts) == 1


def pipelining_script(
    answer: Callable[[str, int], bytes | None], per_connection: int | None = None
) -> Callable[[RawConn], None]:
    """Answer requests in order; ``answer(path, n)`` (n: requests so far) returns bytes, or
    None to hang up there. ``per_connection`` closes each connection after that many."""
    count = [0]
    lock = threading.Lock()

    def script(conn: RawConn) -> None:
        served = 0
        while (req := conn.request()) is not None:
            with lock:
                count[0] += 1
                n = count[0]
            data = answer(target_path(req), n)
            if data is None:
                return
            conn.send(data)
            served += 1
            if per_connection is not None and served >= per_connection:
                return

    return script


def good(path: str) -> bytes:
    return response(body_of(path))


@pytest.mark.parametrize("announced", [False, True])
def test_connection_dropped_half_way_loses_nothing(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep, announced: bool
) -> None:
    # Each connection serves 25 responses, then hangs up at a response boundary, with or
    # without "Connection: close" on the last one (like Apache's MaxKeepAliveRequests): the
    # rest are sent again, and that is no failure.
    def script(conn: RawConn) -> None:
        served = 0
        while (req := conn.request()) is not None:
            served += 1
            last = served == 25
            path = target_path(req)
            conn.send(response(body_of(path), extra="Connection: close\r\n" if last and announced else ""))
            if last:
                return

    srv = raw_server(script)
    paths = object_paths(300)
    f = fetcher([srv.base], clock, sleep)
    collect(f, paths)
    assert sleep.calls == [] and all(r.last_error is None for r in f.status())
    assert srv.connections >= 12 and len(srv.requests) <= 3 * len(paths)


def test_body_stalled_inside_a_pipeline(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "rcds.net")
    # The 40th request gets half a body, then nothing: the stall timeout ends that
    # connection; that path counts a transient failure (retried after a back-off), the
    # other unanswered ones are sent again without one.
    release = threading.Event()
    lock = threading.Lock()
    count = [0]

    def script(conn: RawConn) -> None:
        while (req := conn.request()) is not None:
            data = good(target_path(req))
            with lock:
                count[0] += 1
                stall = count[0] == 40
            if stall:
                conn.send(data[: len(data) // 2])
                release.wait(10)
                return
            conn.send(data)

    srv = raw_server(script)
    paths = object_paths(200)
    f = fetcher([srv.base], clock, sleep, timeout_direct=Timeouts(2, 0.3))
    try:
        collect(f, paths)
    finally:
        release.set()
    (failed,) = failures(caplog)
    assert len(sleep.calls) == 1 and "transfer stalled: no data for 0.3 s" in failed


def test_truncated_body_then_close(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "rcds.net")
    state = {"cut": False}
    lock = threading.Lock()

    def script(conn: RawConn) -> None:
        while (req := conn.request()) is not None:
            data = good(target_path(req))
            with lock:
                cut = len(conn.server.requests) >= 30 and not state["cut"]
                state["cut"] = state["cut"] or cut
            if cut:
                conn.send(data[: len(data) // 2])
                # Closed inside the body: end of file after the half body. A plain close with
                # pipelined requests unread would reset the connection, and a reset discards
                # what the kernel had not sent yet (under load: possibly all of this response,
                # which then looks like a kept-alive connection ended: no failure).
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
                while conn.request() is not None:
                    pass
                return
            conn.send(data)

    srv = raw_server(script)
    paths = object_paths(120)
    f = fetcher([srv.base], clock, sleep)
    collect(f, paths)
    (failed,) = failures(caplog)
    assert len(sleep.calls) == 1 and "short transfer" in failed


def test_connection_close_on_every_response_shrinks_the_window(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep
) -> None:
    def script(conn: RawConn) -> None:
        req = conn.request()
        if req is not None:
            conn.send(b"HTTP/1.0 200 OK\r\n\r\n" + body_of(target_path(req)))

    srv = raw_server(script)
    paths = object_paths(80)
    f = fetcher([srv.base], clock, sleep)
    collect(f, paths)
    assert sleep.calls == []
    assert len(srv.requests) <= len(paths) + 2 * 32  # only the first connections over-asked


def test_garbage_in_the_middle_of_a_pipeline(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "rcds.net")

    def answer(path: str, n: int) -> bytes | None:
        return b"HTTP/9 what\r\n\r\n" if n == 10 else good(path)

    srv = raw_server(pipelining_script(answer))
    paths = object_paths(100)
    f = fetcher([srv.base], clock, sleep)
    collect(f, paths)
    (failed,) = failures(caplog)
    assert len(sleep.calls) == 1 and "bad status line" in failed


def test_error_statuses_inside_a_pipeline_keep_the_connection(
    raw_server: MakeRaw, make_server: MakeServer, clock: FakeClock, sleep: FakeSleep
) -> None:
    paths = object_paths(60)
    flaky = set(paths[5::10])

    def answer(path: str, n: int) -> bytes | None:
        return response(b"gone", "404 Not Found") if path in flaky else good(path)

    srv = raw_server(pipelining_script(answer))
    second = make_server()
    for p in flaky:
        second.put(p, body_of(p))
    f = fetcher([srv.base, second.base], clock, sleep)
    collect(f, paths)
    assert sorted(r.path for r in second.requests) == sorted(flaky)
    assert srv.connections <= 2 and sleep.calls == []


def test_stale_pooled_connections_are_not_failures(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep
) -> None:
    # Connections answer what they get, then the server forgets them all between batches.
    conns: list[RawConn] = []

    def script(conn: RawConn) -> None:
        conns.append(conn)
        pipelining_script(lambda p, n: good(p))(conn)

    srv = raw_server(script)
    paths = object_paths(100)
    f = fetcher([srv.base], clock, sleep)
    for _ in range(3):
        collect(f, paths)
        for c in conns:
            c.close()
    assert sleep.calls == [] and all(r.last_error is None for r in f.status())
