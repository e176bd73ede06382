"""The short path for object GETs (rcds.serve.objects): it must answer exactly as the general
path does, and hand everything unusual back to it. Real server, real loopback sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.serve import objects as objects_module
from rcds.serve.http import AccessRecord, RepositoryServer, make_server
from rcds.serve.objects import ObjectGets, Opened

pytestmark = pytest.mark.timeout(120)

NAME = "fast.example.org"
A = "data/00/" + "aa" * 19
B = "data/00/" + "bb" * 19
C = "data/01/" + "cc" * 19 + "C"
BODIES = {A: b"x\x9c object a", B: b"", C: os.urandom(200_000)}  # empty, small, large (sendfile)
HEADERS = "Host: 127.0.0.1:8000\r\nUser-Agent: rcds/test\r\nConnection: keep-alive\r\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for sub in ("data/00", "data/01", "data/txn"):
        (root / sub).mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes(b"Cabc\n--\n0\n")
    for path, body in BODIES.items():
        (root / path).write_bytes(body)
    return root


class Counted:
    """Counts the requests the short path answered (opened) and handed back (None)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.short = self.general = 0
        real = ObjectGets.open

        def open_(objs: ObjectGets, buf: bytes, pos: int) -> Opened | None:
            got = real(objs, buf, pos)
            if got is None:
                self.general += 1
            else:
                self.short += 1
            return got

        monkeypatch.setattr(ObjectGets, "open", open_)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    return Counted(monkeypatch)


@pytest.fixture
def records() -> list[AccessRecord]:
    return []


@pytest.fixture
def server(repo: Path, records: list[AccessRecord]) -> Iterator[RepositoryServer]:
    with make_server({NAME: repo}, access_log=records.append) as srv:
        srv.start_background()
        yield srv


def get(path: str, headers: str = HEADERS, method: str = "GET") -> bytes:
    return f"{method} /cvmfs/{NAME}/{path} HTTP/1.1\r\n{headers}\r\n".encode()


def exchange(port: int, requests: list[bytes], methods: list[str] | None = None) -> list[tuple[bytes, bytes]]:
    """Send ``requests`` in one go; read until the server closes or all answers arrived.

    Returns (head without the Date/Expires lines, body) per answer.
    """
    methods = methods or ["GET"] * len(requests)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        buf, out = b"", list[tuple[bytes, bytes]]()
        deadline = time.monotonic() + 20
        for method in methods:
            while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
                data = sock.recv(1 << 20)
                if not data:
                    return out
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            size = 0
            if method != "HEAD" and b"Content-Length: " in head:
                size = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            while len(buf) < size:
                data = sock.recv(1 << 20)
                assert data, "closed in a body"
                buf += data
            lines = [ln for ln in head.split(b"\r\n") if not ln.startswith((b"Date:", b"Expires:"))]
            out.append((b"\r\n".join(lines), buf[:size]))
            buf = buf[size:]
        return out


def test_pipelined_object_gets_take_the_short_path_with_the_same_answers(
    server: RepositoryServer, counted: Counted, records: list[AccessRecord]
) -> None:
    paths = [A, B, C, A, "data/00/" + "ee" * 19, C, B] * 5
    answers = exchange(server.port, [get(p) for p in paths])
    assert counted.short >= sum(p in BODIES for p in paths) - 1  # the first one teaches the verdict
    expected = [(404, b"404 Not Found\n") if p not in BODIES else (200, BODIES[p]) for p in paths]
    assert [(int(h.split(b" ")[1]), body) for h, body in answers] == expected
    general = exchange(server.port, [get(A, headers="Host: other\r\n")])  # another block: general path
    assert answers[0] == general[0]
    first = answers[0][0].decode()
    assert "Content-Type: application/octet-stream" in first and "Connection: keep-alive" in first
    assert "Cache-Control: public, max-age=259200, immutable" in first
    assert "Last-Modified" not in first and "ETag" not in first
    got = [(r.method, r.target, r.status, r.sent) for r in records[: len(paths)]]
    assert got == [
        ("GET", f"/cvmfs/{NAME}/{p}", status, len(body))
        for p, (status, body) in zip(paths, expected, strict=True)
    ]


@pytest.mark.parametrize(
    ("headers", "keep"),
    [
        ("Host: x\r\nConnection: close\r\n", False),
        ("Host: x\r\nConnection: keep-alive\r\nConnection: close\r\n", True),  # the first field counts
        ("Host: x\r\nContent-Length: 3\r\n", False),
        ("Host: x\r\nTransfer-Encoding: chunked\r\n", False),
        ("Host: x\r\nX-A: b\r\n", True),
        ("", True),
    ],
)
def test_the_verdict_on_a_header_block_is_the_general_parsers(
    server: RepositoryServer, counted: Counted, headers: str, keep: bool
) -> None:
    """The same request twice: the first goes the general way (and teaches), the second the
    short way; both are answered alike, and a closing verdict closes after the first."""
    requests = [get(A, headers), get(A, headers)]
    answers = exchange(server.port, requests)
    if keep:
        assert len(answers) == 2 and answers[0] == answers[1] and counted.short >= 1
        assert b"Connection: keep-alive" in answers[0][0]
    else:
        assert len(answers) == 1 and b"Connection: close" in answers[0][0]
        again = exchange(server.port, requests)  # the verdict is known now: the short path, same answer
        assert again == answers and counted.short >= 1


def test_expect_continue_and_head_are_left_to_the_general_path(
    server: RepositoryServer, counted: Counted
) -> None:
    requests = [get(A), get(A, HEADERS + "Expect: 100-continue\r\n"), get(A, method="HEAD")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        data = b""
        while data.count(b"HTTP/1.1 ") < 4:
            data += sock.recv(1 << 20) or pytest.fail("closed early")
    assert data.count(b"HTTP/1.1 100 Continue\r\n\r\n") == 1 and data.count(b"HTTP/1.1 200 OK") == 3
    assert data.endswith(b"Connection: keep-alive\r\n\r\n")  # the HEAD answer: no body


def test_links_and_odd_files_go_the_general_way(
    repo: Path, server: RepositoryServer, counted: Counted
) -> None:
    outside = repo.parent / "outside"
    (outside / "00").mkdir(parents=True)
    (outside / "00" / ("dd" * 19)).write_bytes(b"secret")
    (repo / "data/00" / ("dd" * 19)).symlink_to(outside / "00" / ("dd" * 19))  # a link out: refused
    (repo / "data/00" / ("ab" * 19)).symlink_to(repo / A)  # a link inside: allowed, as ever
    (repo / "data/02").symlink_to(outside / "00")  # a bucket that is a link out
    (repo / "data/03").symlink_to(repo / "data/00")  # a bucket that is a link inside
    (repo / "data/00" / ("ef" * 19)).mkdir()  # not a regular file
    os.mkfifo(repo / "data/00" / ("fe" * 19))
    plan = [
        (A, 200, BODIES[A]),
        ("data/00/" + "dd" * 19, 404, None),
        ("data/00/" + "ab" * 19, 200, BODIES[A]),
        ("data/02/" + "dd" * 19, 404, None),
        ("data/03/" + "aa" * 19, 200, BODIES[A]),
        ("data/00/" + "ef" * 19, 404, None),
        ("data/00/" + "fe" * 19, 404, None),
        (A, 200, BODIES[A]),
    ]
    answers = exchange(server.port, [get(p) for p, _, _ in plan])
    assert [int(h.split(b" ")[1]) for h, _ in answers] == [s for _, s, _ in plan]
    assert [b for (_, b), (_, s, body) in zip(answers, plan, strict=True) if s == 200] == [BODIES[A]] * 4
    assert counted.short >= 1 and counted.general >= 6


def test_a_repository_removed_or_a_bucket_replaced_is_seen(repo: Path, server: RepositoryServer) -> None:
    assert [h.split(b" ")[1] for h, _ in exchange(server.port, [get(A)] * 3)] == [b"200"] * 3
    # The bucket moves away and a link out takes its place: seen once the descriptors expire.
    outside = repo.parent / "moved"
    (repo / "data/00").rename(outside)
    (repo / "data/00").symlink_to(outside)
    time.sleep(objects_module.DIR_SECONDS + 0.2)
    assert [h.split(b" ")[1] for h, _ in exchange(server.port, [get(A)] * 3)] == [b"404"] * 3
    server.remove_repository(NAME)
    assert [h.split(b" ")[1] for h, _ in exchange(server.port, [get(C)] * 2)] == [b"404"] * 2


def test_an_open_failure_on_the_short_path_is_a_500(
    server: RepositoryServer, monkeypatch: pytest.MonkeyPatch, counted: Counted
) -> None:
    exchange(server.port, [get(A)] * 2)  # the verdict is learned
    real_open = os.open
    failing = os.fsencode("aa" * 19)

    def open_(path: str | bytes, flags: int, *args: int, **kwargs: int) -> int:
        if os.fsencode(path).endswith(failing):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr("rcds.serve.handler.open_no_symlinks", open_)  # the general path's way in
    answers = exchange(server.port, [get(A), get(B)])
    assert [(h.split(b" ")[1], body) for h, body in answers] == [
        (b"500", b"500 Internal Server Error\n"),
        (b"200", b""),
    ]


def test_bucket_descriptors_are_closed_when_the_server_stops(repo: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    with make_server({NAME: repo}) as srv:
        srv.start_background()
        exchange(srv.port, [get(A), get(C)] * 3)
        assert open_fds() > before  # the listener, and the bucket descriptors
    deadline = time.monotonic() + 5
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before
