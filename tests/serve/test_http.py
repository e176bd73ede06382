"""The repository HTTP server, exercised over real loopback sockets."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import urllib3

from rcds.errors import ConfigError, NotFoundError
from rcds.serve import handler
from rcds.serve.http import AccessRecord, RepositoryServer, make_server

FlipManifest = Callable[[Path, list[bytes]], contextlib.AbstractContextManager[None]]

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("open_strategy")]  # conftest.py

NAME = "user1.example.org"
MANIFEST = b"Cabcdef\nRbeef\nD240\nS7\nNuser1.example.org\n--\n0123456789\n\x00\x01\x02signature"
WHITELIST = b"20240101000000\nE20250101000000\nNuser1.example.org\n--\nff\n\xfe\xff"
OBJECT = "data/ab/" + "cd" * 19 + "C"
OBJECT_BODY = bytes(range(256)) * 1200  # 300 KiB: goes out in several sendfile segments
SMALL = "data/00/" + "11" * 19
SMALL_BODY = b"\x78\x9c small object"
SECRET = b"TOP-SECRET-OUTSIDE-THE-REPOSITORY"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tiny fake repository, plus a secret next to it and links that try to reach it."""
    root = tmp_path / "repo"
    for sub in ("data/ab", "data/00", "data/txn", "sub"):
        (root / sub).mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes(MANIFEST)
    (root / ".cvmfswhitelist").write_bytes(WHITELIST)
    (root / ".cvmfs_master_replica").write_bytes(b"This file marks the repository as replicatable\n")
    (root / OBJECT).write_bytes(OBJECT_BODY)
    (root / SMALL).write_bytes(SMALL_BODY)
    (root / "data/txn/tmp.1").write_bytes(b"half-written")
    (root / ".secret").write_bytes(SECRET)
    (root / "sub/.hidden").write_bytes(SECRET)
    (root / "sub/plain.txt").write_bytes(b"plain file")
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (root / "data/ab/escape").symlink_to(tmp_path / "outside.txt")
    (root / "data/ab/relescape").symlink_to("../../../outside.txt")
    (root / "data/ab/to-txn").symlink_to("../txn/tmp.1")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / (".cvmfsalt-" + "cd" * 20 + "C")).symlink_to(OBJECT)
    os.mkfifo(root / "data/ab/fifo")
    return root


@pytest.fixture
def server(repo: Path) -> Iterator[RepositoryServer]:
    srv = make_server({NAME: repo})
    srv.start_background()
    try:
        yield srv
    finally:
        srv.stop()


def fetch(srv: RepositoryServer, path: str, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, f"/cvmfs/{NAME}/{path}")
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def raw(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send bytes verbatim and read until the server closes the connection."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    request = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    response = raw(port, request.encode("latin-1"))
    assert response.startswith(b"HTTP/1.1 ")
    return int(response.split(b" ", 2)[1]), response


def age(resp: http.client.HTTPResponse) -> float:
    expires, date = (
        parsedate_to_datetime(resp.headers["Expires"]),
        parsedate_to_datetime(resp.headers["Date"]),
    )
    return (expires - date).total_seconds()


def test_root_files_are_short_lived_x_cvmfs(server: RepositoryServer) -> None:
    for path, body in ((".cvmfspublished", MANIFEST), (".cvmfswhitelist", WHITELIST)):
        resp, got = fetch(server, path)
        assert (resp.status, resp.version, got) == (200, 11, body)
        assert resp.headers["Content-Type"] == "application/x-cvmfs"
        assert resp.headers["Cache-Control"] == "max-age=61"
        assert resp.headers["Content-Length"] == str(len(body))
        assert age(resp) == 61
        assert resp.headers["Last-Modified"] is None and resp.headers["ETag"] is None


def test_objects_are_long_lived_octet_streams(server: RepositoryServer) -> None:
    for path, body in ((OBJECT, OBJECT_BODY), (SMALL, SMALL_BODY)):
        resp, got = fetch(server, path)
        assert resp.status == 200 and got == body
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Cache-Control"] == "public, max-age=259200, immutable"
        assert resp.headers["Content-Length"] == str(len(body))
        assert age(resp) == 259200
        assert resp.headers["Last-Modified"] is None and resp.headers["ETag"] is None


def test_custom_max_ages(repo: Path) -> None:
    with make_server({NAME: repo}, root_max_age=5, object_max_age=100) as srv:
        srv.start_background()
        resp, _ = fetch(srv, ".cvmfspublished")
        assert resp.headers["Cache-Control"] == "max-age=5" and age(resp) == 5
        resp, _ = fetch(srv, OBJECT)
        assert resp.headers["Cache-Control"] == "public, max-age=100, immutable" and age(resp) == 100


def test_head_sends_headers_only(server: RepositoryServer) -> None:
    resp, got = fetch(server, OBJECT, "HEAD")
    assert (resp.status, got) == (200, b"")
    assert resp.headers["Content-Length"] == str(len(OBJECT_BODY))
    # On the wire: the response ends right after the blank line.
    status, response = raw_get(server.port, f"/cvmfs/{NAME}/.cvmfspublished", "HEAD")
    assert status == 200 and response.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(MANIFEST)}\r\n".encode() in response


def test_query_string_is_ignored(server: RepositoryServer) -> None:
    resp, got = fetch(server, ".cvmfspublished?cache-bust=1&x")
    assert (resp.status, got) == (200, MANIFEST)


def test_absolute_form_target(server: RepositoryServer) -> None:
    status, response = raw_get(server.port, f"http://127.0.0.1:{server.port}/cvmfs/{NAME}/.cvmfspublished")
    assert status == 200 and response.endswith(MANIFEST)


def test_symlink_inside_the_repository_is_served(server: RepositoryServer) -> None:
    resp, got = fetch(server, ".cvmfsalt-" + "cd" * 20 + "C")
    assert (resp.status, got) == (200, OBJECT_BODY)
    assert resp.headers["Content-Type"] == "application/x-cvmfs"


@pytest.mark.parametrize(
    "path",
    [
        ".cvmfsmissing",
        "data/ab/" + "ee" * 19,
        "data",
        "data/ab",
        "data/ab/",
        "sub",
        "",
        "data/txn/tmp.1",
        "data/ab/fifo",
        ".secret",
        "sub/.hidden",
        f"{OBJECT}/",
    ],
)
def test_missing_refused_and_directories_are_404(server: RepositoryServer, path: str) -> None:
    for method in ("GET", "HEAD"):
        resp, got = fetch(server, path, method)
        assert resp.status == 404, (method, path)
        assert SECRET not in got and (method == "GET") == bool(got)


@pytest.mark.parametrize(
    "target", ["/", "/cvmfs/", f"/cvmfs/{NAME}", "/cvmfs/other.example.org/.cvmfspublished"]
)
def test_targets_outside_repositories_are_404(server: RepositoryServer, target: str) -> None:
    assert raw_get(server.port, target)[0] == 404


def test_plain_files_elsewhere_are_served(server: RepositoryServer) -> None:
    resp, got = fetch(server, "sub/plain.txt")
    assert (resp.status, got) == (200, b"plain file")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_other_methods_are_405(server: RepositoryServer, method: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, f"/cvmfs/{NAME}/.cvmfspublished", body=b"payload")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
    assert resp.headers["Connection"] == "close"
    conn.close()


TRAVERSALS = [
    f"/cvmfs/{NAME}/../../etc/passwd",
    f"/cvmfs/{NAME}/../outside.txt",
    f"/cvmfs/{NAME}/data/ab/../../../outside.txt",
    f"/cvmfs/{NAME}/%2e%2e/outside.txt",
    f"/cvmfs/{NAME}/%2E%2E/%2e%2e/etc/passwd",
    f"/cvmfs/{NAME}/..%2foutside.txt",
    f"/cvmfs/{NAME}/%2e%2e%2Foutside.txt",
    f"/cvmfs/{NAME}/%252e%252e/outside.txt",
    f"/cvmfs/{NAME}/%C0%AE%C0%AE/outside.txt",
    f"/cvmfs/{NAME}/..\\outside.txt",
    f"/cvmfs/{NAME}/..%5coutside.txt",
    f"/cvmfs/{NAME}/.cvmfspublished%00.txt",
    f"/cvmfs/{NAME}/.cvmfspublished\x00",
    f"/cvmfs/{NAME}//etc/passwd",
    f"/cvmfs/{NAME}/%2fetc%2fpasswd",
    f"/cvmfs/{NAME}//.cvmfspublished",
    f"//cvmfs/{NAME}/.cvmfspublished",
    f"/cvmfs/{NAME}/./.cvmfspublished",
    f"/cvmfs/{NAME}/data/ab/./{OBJECT[8:]}",
    f"/cvmfs/../cvmfs/{NAME}/.cvmfspublished",
    "/cvmfs/%2e%2e/outside.txt",
    "/cvmfs/../outside.txt",
    "/../../../etc/passwd",
    "/etc/passwd",
    f"/cvmfs/{NAME}/data/ab/escape",
    f"/cvmfs/{NAME}/data/ab/relescape",
    f"/cvmfs/{NAME}/escape-dir/outside.txt",
    f"/cvmfs/{NAME}/data/ab/to-txn",
    f"/cvmfs/{NAME}/data/txn/tmp.1",
    f"http://evil.example/cvmfs/{NAME}/../outside.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_attempts_are_404(server: RepositoryServer, target: str) -> None:
    status, response = raw_get(server.port, target)
    assert status == 404
    assert SECRET not in response and b"root:" not in response and b"half-written" not in response


def test_keep_alive_reuses_one_connection(server: RepositoryServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/cvmfs/{NAME}/.cvmfspublished")
    resp = conn.getresponse()
    assert resp.read() == MANIFEST and resp.headers["Connection"] == "keep-alive"
    sock = conn.sock
    for method, path, status in (("GET", OBJECT, 200), ("GET", "nope", 404), ("HEAD", SMALL, 200)):
        conn.request(method, f"/cvmfs/{NAME}/{path}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == status and not resp.will_close
        assert conn.sock is sock  # http.client would have reconnected had the server closed
    conn.close()


def test_pipelined_requests_on_one_socket(server: RepositoryServer) -> None:
    one = f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.1\r\nHost: x\r\n\r\n"
    two = f"GET /cvmfs/{NAME}/.cvmfspublished HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = raw(server.port, (one + two).encode())
    assert response.count(b"HTTP/1.1 200 OK\r\n") == 2
    _, _, rest = response.partition(b"\r\n\r\n")
    assert rest.startswith(SMALL_BODY + b"HTTP/1.1 200 OK\r\n") and rest.endswith(MANIFEST)


def test_get_with_a_body_closes_the_connection(server: RepositoryServer) -> None:
    request = f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    response = raw(server.port, request.encode())
    assert b"Connection: close\r\n" in response and response.endswith(SMALL_BODY)


def test_concurrent_gets(server: RepositoryServer) -> None:
    expected = {".cvmfspublished": MANIFEST, OBJECT: OBJECT_BODY, SMALL: SMALL_BODY, "missing": None}
    paths = list(expected)

    def worker(seed: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        for i in range(50):
            if i % 10 == 9:  # mix fresh connections with reused ones
                conn.close()
            path = paths[(seed + i) % len(paths)]
            conn.request("GET", f"/cvmfs/{NAME}/{path}")
            resp = conn.getresponse()
            body = resp.read()
            want = expected[path]
            assert (resp.status, body) == (200, want) if want is not None else resp.status == 404
        conn.close()
        return 50

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 400


def test_ipv6_loopback(repo: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        srv = make_server({NAME: repo}, host="::1")
    except ConfigError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with srv:
        srv.start_background()
        url = srv.url_for(NAME)
        assert url == f"http://[::1]:{srv.port}/cvmfs/{NAME}"
        with urllib3.PoolManager() as pool:
            resp = pool.request("GET", url + "/.cvmfspublished", retries=False)
            assert (resp.status, resp.data) == (200, MANIFEST)
            assert resp.headers["Content-Type"] == "application/x-cvmfs"


def test_url_for_and_urllib3(server: RepositoryServer) -> None:
    url = server.url_for(NAME)
    assert url == f"http://127.0.0.1:{server.port}/cvmfs/{NAME}"
    with urllib3.PoolManager() as pool:
        resp = pool.request("GET", f"{url}/{OBJECT}", retries=False)
        assert (resp.status, resp.data) == (200, OBJECT_BODY)
    with pytest.raises(NotFoundError):
        server.url_for("unknown.example.org")


def test_atomic_replacement_never_mixes_bodies(
    server: RepositoryServer, repo: Path, flip_manifest: FlipManifest
) -> None:
    versions = [b"A" * 65536 + b"\nend-a\n", b"B" * 98304 + b"\nend-b\n"]
    seen = set()
    with flip_manifest(repo, versions):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        for _ in range(300):
            conn.request("GET", f"/cvmfs/{NAME}/.cvmfspublished")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and body in versions
            assert int(resp.headers["Content-Length"]) == len(body)
            seen.add(body)
        conn.close()
    assert seen  # which versions show up depends on timing


def test_add_and_remove_repositories_at_run_time(server: RepositoryServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / ".cvmfspublished").write_bytes(b"other manifest")
    target = "/cvmfs/other.example.org/.cvmfspublished"
    assert raw_get(server.port, target)[0] == 404
    server.add_repository("other.example.org", other)
    server.add_repository("other.example.org", other)  # same again: no-op
    assert raw_get(server.port, target)[1].endswith(b"other manifest")
    assert set(server.repositories) == {NAME, "other.example.org"}
    with pytest.raises(ConfigError):
        server.add_repository("other.example.org", tmp_path / "repo")
    server.remove_repository("other.example.org")
    assert raw_get(server.port, target)[0] == 404
    with pytest.raises(NotFoundError):
        server.remove_repository("other.example.org")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a b", "x\x00"])
def test_bad_repository_names(repo: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        make_server({name: repo})


def test_bad_settings(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_server({NAME: tmp_path / "absent"})
    with pytest.raises(ConfigError):
        make_server({NAME: repo / ".cvmfspublished"})
    with pytest.raises(ConfigError):
        make_server({NAME: repo}, root_max_age=-1)
    with pytest.raises(ConfigError):
        make_server({NAME: repo}, idle_timeout=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            make_server({NAME: repo}, port=busy.getsockname()[1])


def test_stop_closes_idle_connections_and_listener(repo: Path) -> None:
    srv = make_server({NAME: repo})
    srv.start_background()
    port = srv.port
    with pytest.raises(ConfigError):
        srv.start_background()
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    idle.sendall(f"GET /cvmfs/{NAME}/{SMALL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    srv.stop()
    srv.stop()  # idempotent
    assert idle.recv(65536) == b""  # the server closed the kept-alive connection
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_stop_before_start_and_context_manager(repo: Path) -> None:
    make_server({NAME: repo}).stop()
    with make_server({NAME: repo}) as srv:
        srv.start_background()
        port = srv.port
        assert fetch(srv, SMALL)[1] == SMALL_BODY
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_access_log_and_quiet_default(
    repo: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    records: list[AccessRecord] = []
    with make_server({NAME: repo}, access_log=records.append) as srv:
        srv.start_background()
        fetch(srv, SMALL)
        fetch(srv, SMALL, "HEAD")
        fetch(srv, "missing")
        assert raw(srv.port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert [(r.method, r.status, r.sent) for r in records[:3]] == [
        ("GET", 200, len(SMALL_BODY)),
        ("HEAD", 200, 0),
        ("GET", 404, len(b"404 Not Found\n")),
    ]
    assert records[0].target == f"/cvmfs/{NAME}/{SMALL}" and records[0].client == "127.0.0.1"
    assert records[3].status == 400
    assert capsys.readouterr() == ("", "")
    assert all(r.levelname == "DEBUG" for r in caplog.records if r.name.startswith("rcds.serve"))


def test_unreadable_file_is_500(server: RepositoryServer, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def failing_open(path: str, flags: int, *args: int) -> int:
        if str(path).endswith(SMALL):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", failing_open)
    monkeypatch.setattr(handler, "open_no_symlinks", failing_open)  # the openat2 way in
    resp, got = fetch(server, SMALL)
    assert resp.status == 500 and got == b"500 Internal Server Error\n"
    assert resp.headers["Cache-Control"] == "no-store"
