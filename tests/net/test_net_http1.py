"""The lean HTTP/1.1 transport against tiny raw-socket servers: framing, faults, keep-alive."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from rcds.net import Fetcher, Outcome, ProxyConfig, Timeouts
from rcds.net.failures import AttemptError
from rcds.net.http1 import split_url
from rcds.net.transport import Transport

from netkit import FAST, FQRN, response, target_path

if TYPE_CHECKING:
    from conftest import FakeClock, FakeSleep, RepoServer
    from netkit import RawConn, RawServer

    MakeRaw = Callable[[Callable[[RawConn], None]], RawServer]
    MakeServer = Callable[[], RepoServer]

pytestmark = pytest.mark.timeout(60)

BODY = bytes(range(256)) * 40


def get(t: Transport, url: str, proxy: str = "DIRECT", **kw: object) -> bytes:
    buf = bytearray()
    n = t.get(url, proxy, buf.extend, **kw)  # type: ignore[arg-type]
    assert n == len(buf)
    return bytes(buf)


def failure_of(t: Transport, url: str, proxy: str = "DIRECT", **kw: object) -> AttemptError:
    with pytest.raises(AttemptError) as info:
        get(t, url, proxy, **kw)
    return info.value


def serve_all(answer: Callable[[str], bytes], close_after: int | None = None) -> Callable[[RawConn], None]:
    """A script answering every request on a connection with ``answer(request)``."""

    def script(conn: RawConn) -> None:
        served = 0
        while (req := conn.request()) is not None:
            conn.send(answer(req))
            served += 1
            if close_after is not None and served >= close_after:
                return

    return script


def test_split_url() -> None:
    assert split_url("http://h.example.org/cvmfs/x/a%20b") == (
        "h.example.org",
        "h.example.org",
        80,
        "/cvmfs/x/a%20b",
    )
    assert split_url("http://[::1]:8080/p") == ("[::1]:8080", "::1", 8080, "/p")
    assert split_url("http://h:3128") == ("h:3128", "h", 3128, "/")
    for bad in ("https://h/p", "http://h:x/p", "http://u@h/p", "http://h:0/"):
        with pytest.raises(ValueError):
            split_url(bad)


def test_request_is_one_prepared_message_and_connections_are_kept(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY)))
    t = Transport(FAST)
    for _ in range(5):
        assert get(t, f"{srv.base}/data/ab/x") == BODY
    assert srv.connections == 1
    lines = srv.requests[0][1].split("\r\n")
    assert lines[0] == f"GET /cvmfs/{FQRN}/data/ab/x HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == f"127.0.0.1:{srv.port}"
    assert headers["Connection"] == "keep-alive" and headers["User-Agent"].startswith("rcds/")
    get(t, f"{srv.base}/data/ab/x", nocache=True)
    last = srv.requests[-1][1]
    assert "Pragma: no-cache" in last and "Cache-Control: no-cache" in last
    t.close()


def test_proxy_requests_use_the_absolute_form(raw_server: MakeRaw) -> None:
    proxy = raw_server(serve_all(lambda req: response(b"via proxy")))
    t = Transport(FAST)
    origin = "http://origin.example.org:8000/cvmfs/x"
    assert get(t, f"{origin}/data/ab/y", proxy=f"http://127.0.0.1:{proxy.port}") == b"via proxy"
    lines = proxy.requests[0][1].split("\r\n")
    assert lines[0] == "GET http://origin.example.org:8000/cvmfs/x/data/ab/y HTTP/1.1"
    assert "Host: origin.example.org:8000" in lines


def test_proxy_error_page_is_a_proxy_failure(raw_server: MakeRaw) -> None:
    page = response(
        b"<html>squid says no</html>", "503 Service Unavailable", "X-Squid-Error: ERR_CONNECT_FAIL 111\r\n"
    )
    proxy = raw_server(serve_all(lambda req: page))
    err = failure_of(Transport(FAST), "http://dead.example.org/cvmfs/x/p", f"http://127.0.0.1:{proxy.port}")
    assert err.failure.outcome is Outcome.PROXY and "ERR_CONNECT_FAIL" in err.failure.reason
    # Lower-case proxy-status with error= too; directly the same page is the host's failure.
    page2 = response(b"", "502 Bad Gateway", "proxy-status: cache; error=connection_refused\r\n")
    proxy2 = raw_server(serve_all(lambda req: page2))
    err = failure_of(Transport(FAST), "http://dead.example.org/cvmfs/x/p", f"http://127.0.0.1:{proxy2.port}")
    assert err.failure.outcome is Outcome.PROXY and err.failure.status == 502
    assert failure_of(Transport(FAST), f"{proxy.base}/p").failure.outcome is Outcome.HOST


def chunked(body: bytes, size: int = 1000) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def test_chunked_bodies_and_keep_alive(raw_server: MakeRaw) -> None:
    resp = response(chunked(BODY), extra="Transfer-Encoding: chunked\r\n", length=False)
    srv = raw_server(serve_all(lambda req: resp))
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == BODY
    assert get(t, f"{srv.base}/b") == BODY
    assert srv.connections == 1


def test_chunked_body_over_max_size_is_bad_data(raw_server: MakeRaw) -> None:
    resp = response(chunked(BODY), extra="Transfer-Encoding: chunked\r\n", length=False)
    srv = raw_server(serve_all(lambda req: resp))
    err = failure_of(Transport(FAST), f"{srv.base}/a", max_size=100)
    assert err.failure.outcome is Outcome.BAD_DATA and "exceeds the limit" in err.failure.reason


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n",  # not hex
        b"10\r\n" + b"x" * 10,  # closed inside a chunk
        b"5\r\nxxxxxNOCRLF0\r\n\r\n",  # no CRLF after the chunk
    ],
)
def test_broken_chunked_framing_is_a_transient_host_failure(raw_server: MakeRaw, wire: bytes) -> None:
    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)

    srv = raw_server(script)
    err = failure_of(Transport(FAST), f"{srv.base}/a")
    assert err.failure.outcome is Outcome.HOST and err.failure.transient


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
def test_body_until_eof_without_length(raw_server: MakeRaw, version: str) -> None:
    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            close = "Connection: close\r\n" if version == "HTTP/1.1" else ""
            conn.send(f"{version} 200 OK\r\n{close}\r\n".encode() + BODY)

    srv = raw_server(script)
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == BODY
    assert get(t, f"{srv.base}/b") == BODY
    assert srv.connections == 2  # never reused


def test_http10_keep_alive_and_bare_lf_heads(raw_server: MakeRaw) -> None:
    resp = b"HTTP/1.0 200 OK\nContent-Length: 5\nConnection: keep-alive\n\nhello"
    srv = raw_server(serve_all(lambda req: resp))
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == b"hello" and get(t, f"{srv.base}/b") == b"hello"
    assert srv.connections == 1


def test_informational_responses_are_skipped(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"after")))
    assert get(Transport(FAST), f"{srv.base}/a") == b"after"


def test_truncated_body_is_a_short_transfer(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY)[:-100], close_after=1))
    err = failure_of(Transport(FAST), f"{srv.base}/a")
    f = err.failure
    assert f.outcome is Outcome.HOST and f.transient
    assert "short transfer" in f.reason and f"of {len(BODY)}" in f.reason


def test_bad_content_length_is_a_host_failure(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nhello"))
    err = failure_of(Transport(FAST), f"{srv.base}/a")
    assert err.failure.outcome is Outcome.HOST and not err.failure.transient
    assert "invalid Content-Length '12abc'" in err.failure.reason


def test_content_length_over_max_size_is_bad_data_before_the_body(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY)))
    err = failure_of(Transport(FAST), f"{srv.base}/a", max_size=10)
    assert err.failure.outcome is Outcome.BAD_DATA and f"Content-Length {len(BODY)}" in err.failure.reason


@pytest.mark.parametrize(
    "garbage", [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"\x00\x01\x02 binary\r\n\r\n"]
)
def test_garbage_status_line(raw_server: MakeRaw, garbage: bytes) -> None:
    srv = raw_server(serve_all(lambda req: garbage, close_after=1))
    err = failure_of(Transport(FAST), f"{srv.base}/a")
    assert err.failure.outcome is Outcome.HOST and err.failure.transient
    assert "bad status line" in err.failure.reason


def test_endless_headers_are_refused(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000, close_after=1))
    err = failure_of(Transport(FAST), f"{srv.base}/a")
    assert "headers longer than" in err.failure.reason


def test_stalled_body_times_out(raw_server: MakeRaw) -> None:
    release = threading.Event()

    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            conn.send(response(BODY)[:500])
            release.wait(10)

    srv = raw_server(script)
    settings = FAST._replace(timeout_direct=Timeouts(2, 0.3))
    t0 = time.monotonic()
    err = failure_of(Transport(settings), f"{srv.base}/a")
    release.set()
    assert time.monotonic() - t0 < 3
    assert err.failure.transient and "transfer stalled: no data for 0.3 s after" in err.failure.reason


def test_no_response_times_out(raw_server: MakeRaw) -> None:
    release = threading.Event()

    def script(conn: RawConn) -> None:
        conn.request()
        release.wait(10)

    srv = raw_server(script)
    settings = FAST._replace(timeout_direct=Timeouts(2, 0.3))
    err = failure_of(Transport(settings), f"{srv.base}/a")
    release.set()
    assert err.failure.transient and "timed out" in err.failure.reason


def test_low_speed_limit(raw_server: MakeRaw) -> None:
    stop = threading.Event()

    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            data = response(BODY)
            conn.send(data[:200])
            for i in range(200, len(data), 8):
                if stop.wait(0.05):
                    return
                conn.send(data[i : i + 8])

    srv = raw_server(script)
    settings = FAST._replace(timeout_direct=Timeouts(2, 0.4), low_speed_limit=1000)
    t0 = time.monotonic()
    err = failure_of(Transport(settings), f"{srv.base}/a")
    stop.set()
    assert time.monotonic() - t0 < 3 and "too slow" in err.failure.reason


def test_error_body_is_drained_and_the_connection_kept(raw_server: MakeRaw) -> None:
    def answer(req: str) -> bytes:
        return response(b"not here", "404 Not Found") if "missing" in req else response(BODY)

    srv = raw_server(serve_all(answer))
    t = Transport(FAST)
    err = failure_of(t, f"{srv.base}/missing")
    assert err.failure.status == 404 and err.failure.outcome is Outcome.HOST
    assert get(t, f"{srv.base}/there") == BODY
    assert srv.connections == 1


def test_write_errors_propagate_and_drop_the_connection(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY)))
    t = Transport(FAST)

    def explode(_chunk: bytes) -> None:
        raise KeyError("consumer bug")

    with pytest.raises(KeyError):
        t.get(f"{srv.base}/a", "DIRECT", explode)
    assert get(t, f"{srv.base}/b") == BODY
    assert srv.connections == 2


def test_server_closing_a_kept_alive_connection_is_retried_once_without_failure(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep
) -> None:
    # Each connection answers one request, then reads the next one and hangs up without
    # answering: the race a keep-alive idle timeout produces.
    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            conn.send(response(BODY))
            conn.request()

    srv = raw_server(script)
    f = Fetcher([srv.base], settings=FAST, clock=clock, sleep=sleep, rng=random.Random(0))
    for i in range(4):
        assert f.fetch(f"data/ab/{i}") == BODY
    assert sleep.calls == []
    assert all(r.last_error is None for r in f.status())
    assert srv.connections == 4
    # After the first, each path was asked on the dead kept-alive connection, then on a new one.
    assert srv.paths() == ["data/ab/0"] + [f"data/ab/{i}" for i in (1, 2, 3) for _ in range(2)]


def test_server_closed_idle_connection_is_not_reused(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY), close_after=1))
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == BODY
    time.sleep(0.1)  # the FIN arrives; the idle check sees it
    assert get(t, f"{srv.base}/b") == BODY
    assert len(srv.requests) == 2 and srv.connections == 2  # nothing sent to the dead one


def test_fresh_connection_closed_without_answer_counts_as_a_failure(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep
) -> None:
    def script(conn: RawConn) -> None:
        req = conn.request()
        if req is not None and conn.index > 0:
            conn.send(response(BODY))

    srv = raw_server(script)
    f = Fetcher([srv.base], settings=FAST, clock=clock, sleep=sleep, rng=random.Random(0))
    assert f.fetch("data/ab/x") == BODY
    assert len(sleep.calls) == 1  # a transient failure, retried after a back-off


def test_dead_proxy_blame_and_message(dead: str) -> None:
    err = failure_of(Transport(FAST), "http://origin.example.org/cvmfs/x/p", dead)
    assert err.failure.outcome is Outcome.PROXY and err.failure.transient
    assert "cannot connect to the proxy" in err.failure.reason and "refused" in err.failure.reason
    err = failure_of(Transport(FAST), f"{dead}/cvmfs/x/p")
    assert err.failure.outcome is Outcome.HOST and "cannot connect" in err.failure.reason


def test_concurrent_gets_share_the_pool(make_server: MakeServer) -> None:
    s = make_server()
    for i in range(40):
        s.put(f"data/{i}", str(i).encode() * 50)
    t = Transport(FAST)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, 40, 6):
                assert get(t, f"{s.base}/data/{i}") == str(i).encode() * 50
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == []
    t.close()
    assert get(t, f"{s.base}/data/1") == b"1" * 50  # usable after close


def test_https_still_goes_through_urllib3(dead: str) -> None:
    url = dead.replace("http://", "https://") + "/cvmfs/x/p"
    err = failure_of(Transport(FAST), url)
    assert err.failure.outcome is Outcome.HOST and "connect" in err.failure.reason


def test_fetcher_classification_through_the_new_transport(
    raw_server: MakeRaw, clock: FakeClock, sleep: FakeSleep
) -> None:
    bad = raw_server(serve_all(lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"))
    good = raw_server(serve_all(lambda req: response(target_path(req).encode())))
    f = Fetcher(
        [bad.base, good.base], ProxyConfig.direct(), FAST, clock=clock, sleep=sleep, rng=random.Random(0)
    )
    assert f.fetch("data/ab/x") == b"data/ab/x"
    assert sleep.calls == []  # an invalid length is not retried on the same host
    assert "invalid Content-Length" in (next(r for r in f.status() if r.url == bad.base).last_error or "")


def test_header_names_are_case_insensitive_and_matched_whole(raw_server: MakeRaw) -> None:
    resp = (
        b"HTTP/1.1 200 OK\r\nX-Content-Length: 99\r\nCONTENT-LENGTH:5\r\nCoNNection: Keep-Alive\r\n\r\nhello"
    )
    srv = raw_server(serve_all(lambda req: resp))
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == b"hello" and get(t, f"{srv.base}/b") == b"hello"
    assert srv.connections == 1


def test_no_content_statuses_have_no_body(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: b"HTTP/1.1 204 No Content\r\n\r\n"))
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == b"" and get(t, f"{srv.base}/b") == b""
    assert srv.connections == 1


def test_chunked_body_ended_by_eof_in_the_trailers(raw_server: MakeRaw) -> None:
    def script(conn: RawConn) -> None:
        if conn.request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")

    srv = raw_server(script)
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == b"hello"
    assert get(t, f"{srv.base}/b") == b"hello"
    assert srv.connections == 2


def test_urls_the_lean_path_does_not_parse_go_through_urllib3(dead: str) -> None:
    proxy = dead.replace("http://", "http://user:secret@")
    err = failure_of(Transport(FAST), "http://origin.example.org/cvmfs/x/p", proxy)
    assert err.failure.outcome is Outcome.PROXY and "connect" in err.failure.reason


@pytest.mark.parametrize(
    "wire",
    [
        response(b"drip-fed body"),
        response(chunked(b"drip-fed body", 4), extra="Transfer-Encoding: chunked\r\n", length=False),
        b"HTTP/1.1 200 OK\nContent-Length: 13\n\ndrip-fed body",
    ],
)
def test_responses_arriving_byte_by_byte(raw_server: MakeRaw, wire: bytes) -> None:
    def script(conn: RawConn) -> None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while conn.request() is not None:
            for i in range(len(wire)):
                conn.send(wire[i : i + 1])
                time.sleep(0.001)

    srv = raw_server(script)
    t = Transport(FAST)
    assert get(t, f"{srv.base}/a") == b"drip-fed body"
    assert get(t, f"{srv.base}/b") == b"drip-fed body"
    assert srv.connections == 1


@pytest.mark.parametrize("bad", ["/cvmfs/x/a b", "/cvmfs/x/a\r\nX-Injected: 1", "/cvmfs/x/\u00e9"])
def test_unsafe_urls_never_reach_the_wire(raw_server: MakeRaw, bad: str) -> None:
    # The lean path leaves them to urllib3, which percent-encodes (or refuses) them.
    srv = raw_server(serve_all(lambda req: response(BODY)))
    with contextlib.suppress(AttemptError, ValueError):
        get(Transport(FAST), f"http://127.0.0.1:{srv.port}{bad}")
    for _, head in srv.requests:
        lines = head.split("\r\n")
        assert len(lines[0].split(" ")) == 3 and not any(line.startswith("X-Injected") for line in lines)
        assert head.isascii()


def test_keep_alive_with_descriptors_above_fd_setsize(raw_server: MakeRaw) -> None:
    srv = raw_server(serve_all(lambda req: response(BODY)))
    t = Transport(FAST)
    held: list[int] = []
    try:
        while True:  # push the next socket's descriptor above 1024, if the limit allows
            fd = os.open(os.devnull, os.O_RDONLY)
            held.append(fd)
            if fd > 1030:
                break
    except OSError:
        pytest.skip("the descriptor limit is too low for this test")
    try:
        for _ in range(3):
            assert get(t, f"{srv.base}/a") == BODY
        assert srv.connections == 1
    finally:
        t.close()
        for fd in held:
            os.close(fd)


@pytest.mark.parametrize(
    ("base", "proxy"),
    [
        ("http://127.0.0.1:8000/cvmfs/r.example.org", "DIRECT"),
        ("http://[::1]:8000/cvmfs/r.example.org", "DIRECT"),
        ("http://s.example.org/cvmfs/r.example.org", "http://127.0.0.1:3128"),
    ],
)
def test_a_preparer_makes_the_requests_prepare_makes(base: str, proxy: str) -> None:
    t = Transport(FAST)
    made = t.preparer(base, proxy)
    assert made is not None
    pool, make = made
    for path in ["data/ab/" + "c" * 38, "data/00/" + "1" * 38 + "C", ".cvmfspublished", "a/b.c~d-e_f"]:
        prepared = t.prepare(f"{base}/{path}", proxy)
        assert prepared is not None and prepared[0] is pool
        assert make(path) == prepared[1]
    assert t.preparer("https://s.example.org/cvmfs/r", "DIRECT") is None  # through urllib3
