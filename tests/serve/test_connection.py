"""The server's connection handling over real loopback sockets: pipelining, limits, timeouts, slow
and vanishing clients. The behaviour of single requests is in test_http.py."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rcds.serve.http import AccessRecord, RepositoryServer, make_server
from rcds.serve.request import MAX_HEADERS, MAX_REQUEST_LINE

FlipManifest = Callable[[Path, list[bytes]], contextlib.AbstractContextManager[None]]

pytestmark = pytest.mark.timeout(120)

NAME = "user1.example.org"
MANIFEST = b"Cabcdef\nRbeef\nS7\nNuser1.example.org\n--\n0123456789\n\x00\x01signature"
SMALL = "data/00/" + "11" * 19
SMALL_BODY = b"\x78\x9c small object"
LARGE = "data/ab/" + "cd" * 19 + "C"
LARGE_BODY = os.urandom(3 << 20)  # several sendfile chunks
MEDIUM_BODY = os.urandom(60_000)  # still read and written with its head


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for sub in ("data/ab", "data/00", "data/txn"):
        (root / sub).mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes(MANIFEST)
    (root / SMALL).write_bytes(SMALL_BODY)
    (root / LARGE).write_bytes(LARGE_BODY)
    return root


@pytest.fixture
def server(repo: Path) -> Iterator[RepositoryServer]:
    with make_server({NAME: repo}) as srv:
        srv.start_background()
        yield srv


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} /cvmfs/{NAME}/{path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError("the server did not close the connection")


def split_responses(stream: bytes, methods: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Cut a byte stream into responses (HEAD answers have no body); all bytes must be used."""
    out = []
    for method in methods:
        head, sep, stream = stream.partition(b"\r\n\r\n")
        assert sep, f"incomplete head: {head[:80]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        size = 0 if method == "HEAD" else int(headers["Content-Length"])
        out.append((int(lines[0].split()[1]), headers, stream[:size]))
        stream = stream[size:]
    assert stream == b""
    return out


def recv_responses(sock: socket.socket, methods: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Read exactly the answers to ``methods`` from a kept-alive connection."""
    buf, out = b"", []
    for method in methods:
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(1 << 20) or pytest.fail("closed early")
        head = buf.split(b"\r\n\r\n", 1)[0]
        size = 0 if method == "HEAD" else int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        total = len(head) + 4 + size
        while len(buf) < total:
            buf += sock.recv(1 << 20) or pytest.fail("closed early")
        out += split_responses(buf[:total], [method])
        buf = buf[total:]
    assert buf == b""
    return out


def test_many_requests_in_one_packet_are_answered_in_order(server: RepositoryServer) -> None:
    paths = [SMALL, ".cvmfspublished", LARGE, SMALL, LARGE, ".cvmfspublished"] * 4
    expected = {SMALL: SMALL_BODY, ".cvmfspublished": MANIFEST, LARGE: LARGE_BODY}
    with connect(server.port) as sock:
        sock.sendall(b"".join(get(p) for p in paths))
        answers = recv_responses(sock, ["GET"] * len(paths))
    assert [(status, body) for status, _, body in answers] == [(200, expected[p]) for p in paths]
    assert all(h["Connection"] == "keep-alive" for _, h, _ in answers)


def test_mixed_head_get_and_404_in_a_pipeline(server: RepositoryServer) -> None:
    plan = [
        ("HEAD", LARGE, 200),
        ("GET", "missing", 404),
        ("GET", SMALL, 200),
        ("HEAD", "data/txn/x", 404),
        ("GET", LARGE, 200),
        ("HEAD", ".cvmfspublished", 200),
        ("GET", "../../etc/passwd", 404),
        ("GET", ".cvmfspublished", 200),
    ]
    with connect(server.port) as sock:
        sock.sendall(b"".join(get(p, m) for m, p, _ in plan))
        answers = recv_responses(sock, [m for m, _, _ in plan])
    assert [a[0] for a in answers] == [s for _, _, s in plan]
    assert answers[0][1]["Content-Length"] == str(len(LARGE_BODY)) and answers[0][2] == b""
    assert answers[1][2] == b"404 Not Found\n" and answers[2][2] == SMALL_BODY
    assert answers[3][1]["Content-Length"] == "14" and answers[4][2] == LARGE_BODY
    assert answers[7][2] == MANIFEST


def test_pipeline_stops_at_connection_close(server: RepositoryServer) -> None:
    stream = get(SMALL) + get(".cvmfspublished", extra="Connection: close\r\n") + get(SMALL)
    with connect(server.port) as sock:
        sock.sendall(stream)
        answers = split_responses(read_until_closed(sock), ["GET", "GET"])
    assert [a[2] for a in answers] == [SMALL_BODY, MANIFEST]
    assert answers[1][1]["Connection"] == "close"


def test_requests_split_at_every_byte(server: RepositoryServer) -> None:
    stream = get(SMALL) + get(".cvmfspublished", "HEAD") + get(SMALL, extra="Connection: close\r\n")
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(stream)):
            sock.send(stream[i : i + 1])
        answers = split_responses(read_until_closed(sock), ["GET", "HEAD", "GET"])
    assert [a[0] for a in answers] == [200, 200, 200] and answers[2][2] == SMALL_BODY


def test_bare_lf_and_leading_words(server: RepositoryServer) -> None:
    stream = f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.1\nHost: x\nConnection: close\n\n".encode()
    with connect(server.port) as sock:
        sock.sendall(stream)
        assert split_responses(read_until_closed(sock), ["GET"])[0][2] == SMALL_BODY


def test_http10_closes_unless_keep_alive_is_asked(server: RepositoryServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.0\r\n\r\n".encode())
        ((status, headers, body),) = split_responses(read_until_closed(sock), ["GET"])
    assert (status, headers["Connection"], body) == (200, "close", SMALL_BODY)
    with connect(server.port) as sock:
        sock.sendall(f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode() * 2)
        answers = recv_responses(sock, ["GET", "GET"])
    assert [a[1]["Connection"] for a in answers] == ["keep-alive", "keep-alive"]


def test_expect_100_continue(server: RepositoryServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(get(SMALL, extra="Expect: 100-continue\r\nConnection: close\r\n"))
        stream = read_until_closed(sock)
    assert stream.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n") and stream.endswith(
        SMALL_BODY
    )


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /cvmfs/" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"a" * (MAX_REQUEST_LINE + 10), 414),  # no line end yet: refused all the same
        (get(SMALL, extra="X-Long: " + "v" * (MAX_REQUEST_LINE + 10) + "\r\n"), 431),
        (get(SMALL, extra="".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS + 1))), 431),
        (b"GET /x HTTP/1.1\r\n" + b"X: y\r\n" * 20000, 431),  # head never ends
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
        (b"GET /x HTTP/x\r\n\r\n", 400),
        (b"GET /x HTTP/1.1 extra\r\n\r\n", 400),
        (b"POST /x\r\n\r\n", 400),
    ],
)
def test_malformed_or_oversized_heads_are_4xx_and_close(
    server: RepositoryServer, request_bytes: bytes, status: int
) -> None:
    with connect(server.port) as sock:
        sock.sendall(request_bytes + get(SMALL))
        stream = read_until_closed(sock)
    assert stream.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close\r\n" in stream and stream.count(b"HTTP/1.1") == 1


def test_a_client_still_sending_a_huge_head_gets_its_431_not_a_reset(server: RepositoryServer) -> None:
    """The server stops reading at the limit; closing with the rest unread would reset the
    connection (and the client would lose the answer): it shuts its side and drains instead."""
    head = b"GET /x HTTP/1.1\r\n" + b"X: y\r\n" * 400_000  # 2.4 MB, far beyond the socket buffers
    for _ in range(3):
        with connect(server.port) as sock:
            sock.sendall(head)
            stream = read_until_closed(sock)
        assert stream.startswith(b"HTTP/1.1 431 ") and stream.count(b"HTTP/1.1") == 1


def test_lingering_after_a_refusal_is_bounded(repo: Path) -> None:
    with make_server({NAME: repo}, idle_timeout=0.5) as srv:
        srv.start_background()
        with connect(srv.port) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\n" + b"X: y\r\n" * 20_000)
            assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")  # our side: EOF at once
            t0 = time.monotonic()
            with pytest.raises(OSError):  # the server drops the connection after its linger
                while time.monotonic() - t0 < 5:
                    sock.sendall(b"X: y\r\n" * 200)
                    time.sleep(0.05)
            assert time.monotonic() - t0 < 3


def test_empty_request_line_closes_silently(server: RepositoryServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"\r\n" + get(SMALL))
        assert read_until_closed(sock) == b""


def test_idle_and_slow_heads_time_out(repo: Path) -> None:
    with make_server({NAME: repo}, idle_timeout=0.5) as srv:
        srv.start_background()
        with connect(srv.port) as idle, connect(srv.port) as slow, connect(srv.port) as used:
            used.sendall(get(SMALL))
            assert recv_responses(used, ["GET"])[0][2] == SMALL_BODY
            t0 = time.monotonic()
            for _ in range(10):  # a head trickling in does not keep the connection open
                try:
                    slow.sendall(b"GET /cvmfs/")
                except OSError:
                    break
                time.sleep(0.2)
            assert read_until_closed(slow, 5.0) == b""
            assert time.monotonic() - t0 < 1.5
            assert read_until_closed(idle, 5.0) == b"" and read_until_closed(used, 5.0) == b""
            assert not srv.connections


def test_slow_reader_does_not_block_others(server: RepositoryServer) -> None:
    """A client that pipelines large requests and reads nothing holds only its own connection."""
    with connect(server.port) as stuck:
        stuck.sendall(get(LARGE) * 8)
        half = connect(server.port)
        half.sendall(b"GET /cvmfs/" + NAME.encode())  # and another that never finishes its head
        t0 = time.monotonic()
        for _ in range(50):
            with connect(server.port) as other:
                other.sendall(get(SMALL) + get(".cvmfspublished", extra="Connection: close\r\n"))
                assert [a[2] for a in split_responses(read_until_closed(other), ["GET", "GET"])] == [
                    SMALL_BODY,
                    MANIFEST,
                ]
        assert time.monotonic() - t0 < 10
        half.close()
        # The stuck client still gets its answers, complete and in order, once it reads.
        answers = recv_responses(stuck, ["GET"] * 8)
        assert all(a[2] == LARGE_BODY for a in answers)


def test_client_vanishing_mid_body(repo: Path) -> None:
    huge = "data/ab/" + "ef" * 19 + "C"
    (repo / huge).write_bytes(bytes(32 << 20))  # more than the socket buffers take in
    records: list[AccessRecord] = []
    with make_server({NAME: repo}, access_log=records.append) as srv:
        srv.start_background()
        for _ in range(5):
            sock = connect(srv.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(get(huge) * 3)
            assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # reset, with most of the body unsent
        with connect(srv.port) as sock:  # the server carries on
            sock.sendall(get(LARGE, extra="Connection: close\r\n"))
            assert split_responses(read_until_closed(sock), ["GET"])[0][2] == LARGE_BODY
        deadline = time.monotonic() + 10
        while len(records) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(records) == 6
    assert all(r.status == 200 and r.sent < (32 << 20) for r in records if huge in r.target)
    assert sum(huge in r.target for r in records) == 5
    assert [r.sent for r in records if huge not in r.target] == [len(LARGE_BODY)]
    assert not srv.connections


@pytest.mark.parametrize("size", [1000, 200_000])  # read with the head / sendfile
def test_atomic_rename_during_pipelined_requests(
    server: RepositoryServer, repo: Path, size: int, flip_manifest: FlipManifest
) -> None:
    versions = [b"A" * size + b"\nend-a\n", b"B" * (size + 3000) + b"\nend-b\n"]
    seen = set()
    with flip_manifest(repo, versions), connect(server.port) as sock:
        for _ in range(40):
            sock.sendall(get(".cvmfspublished") * 16)
            for status, headers, body in recv_responses(sock, ["GET"] * 16):
                assert status == 200 and body in versions
                assert int(headers["Content-Length"]) == len(body)
                seen.add(body)
    assert seen


def test_stop_from_the_access_log_answers_nothing_more(repo: Path) -> None:
    records: list[AccessRecord] = []
    srv: RepositoryServer

    def access(record: AccessRecord) -> None:
        records.append(record)
        if len(records) == 2:
            srv.stop()

    srv = make_server({NAME: repo}, access_log=access)
    srv.start_background()
    try:
        with connect(srv.port) as sock:
            sock.sendall(get(SMALL) * 5)
            stream = read_until_closed(sock)
    finally:
        srv.stop()
    assert len(records) == 2 and split_responses(stream, ["GET", "GET"])[1][2] == SMALL_BODY
    with pytest.raises(ConnectionRefusedError):
        connect(srv.port).close()


def test_long_pipeline_to_a_late_reader_is_answered_completely_in_order(
    server: RepositoryServer, repo: Path
) -> None:
    """Backpressure: answers pile up, the server stops answering and reading, then catches up."""
    medium = "data/00/" + "22" * 19
    (repo / medium).write_bytes(MEDIUM_BODY)
    paths = [SMALL, medium, "missing", medium] * 150  # ~18 MB of answers, more than socket buffers
    expected = {SMALL: (200, SMALL_BODY), medium: (200, MEDIUM_BODY), "missing": (404, b"404 Not Found\n")}
    with connect(server.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(b"".join(get(p) for p in paths),), daemon=True)
        sender.start()
        time.sleep(0.5)  # nothing is read meanwhile
        answers = recv_responses(sock, ["GET"] * len(paths))
        sender.join(10)
    assert [(status, body) for status, _, body in answers] == [expected[p] for p in paths]


def test_bodies_not_in_the_page_cache_are_read_aside_in_order(
    server: RepositoryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads that would wait for the disk go to a worker thread; the pipeline keeps its order."""

    calls = 0
    real_preadv = os.preadv

    def sometimes_cold(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        nonlocal calls
        calls += 1
        if calls % 3:
            raise BlockingIOError(11, "would block")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", sometimes_cold)  # the module body.py uses
    paths = [SMALL, ".cvmfspublished", "missing", SMALL, LARGE] * 6
    expected = {SMALL: (200, SMALL_BODY), ".cvmfspublished": (200, MANIFEST), LARGE: (200, LARGE_BODY)}
    with connect(server.port) as sock:
        sock.sendall(b"".join(get(p) for p in paths) + get(SMALL, "HEAD"))
        answers = recv_responses(sock, ["GET"] * len(paths) + ["HEAD"])
    assert [(s, b) for s, _, b in answers[:-1]] == [expected.get(p, (404, b"404 Not Found\n")) for p in paths]
    assert answers[-1][:1] == (200,) and calls >= 2  # requests behind a cold one are not tried


def test_no_descriptor_leaks_when_clients_vanish_and_the_server_stops(repo: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    srv = make_server({NAME: repo})
    srv.start_background()
    socks = []
    for i in range(6):
        sock = connect(srv.port)
        sock.sendall(get(LARGE) * 4 + get(SMALL) * 4)
        if i % 2:
            sock.recv(1000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        else:
            socks.append(sock)  # still sending when the server stops
    time.sleep(0.2)
    srv.stop()
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 5
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before
