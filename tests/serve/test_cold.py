"""Pipelined requests for files whose pages are not in the page cache, over real loopback sockets.

The files are made cold for real (written, synced, then ``posix_fadvise(POSIX_FADV_DONTNEED)``),
so the server takes its disk path (:mod:`rcds.serve.batch`): the bodies of a cold request and of
the requests after it are read by one worker-thread job, and the answers still go out in order.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rcds.serve import answer as answer_module
from rcds.serve.batch import HEAD_BYTES, MAX_COLD, READ_AHEAD, Batch
from rcds.serve.body import SMALL_BODY, Deferred
from rcds.serve.body import read_cached as read_cached_really
from rcds.serve.connection import MAX_BATCH
from rcds.serve.http import AccessRecord, RepositoryServer, make_server
from rcds.serve.request import Request

from .test_connection import connect, read_until_closed, recv_responses, split_responses

pytestmark = pytest.mark.timeout(120)

NAME = "cold.example.org"
MANIFEST = b"Cabcdef\nRbeef\nS7\nNcold.example.org\n--\n0123456789\n"
NOT_FOUND = b"404 Not Found\n"


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} /cvmfs/{NAME}/{path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def drop_pages(paths: list[Path]) -> None:
    """Write back and drop the page cache of every file of ``paths``."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class ColdRepo:
    """A repository of small and large objects whose pages can be dropped."""

    def __init__(self, root: Path, small: int, large: int, sizes: tuple[int, int]) -> None:
        self.root = root
        rng = random.Random(small * 1000 + large)
        self.bodies: dict[str, bytes] = {".cvmfspublished": MANIFEST}
        (root / "data" / "txn").mkdir(parents=True)
        (root / ".cvmfspublished").write_bytes(MANIFEST)
        for i in range(small + large):
            size = rng.randint(*sizes) if i < small else rng.randint(SMALL_BODY + 1, 3 * SMALL_BODY)
            path = f"data/{i % 256:02x}/{i:040x}"
            (root / path).parent.mkdir(exist_ok=True)
            body = rng.randbytes(size)
            (root / path).write_bytes(body)
            self.bodies[path] = body

    @property
    def small(self) -> list[str]:
        return [p for p, b in self.bodies.items() if p.startswith("data/") and len(b) <= SMALL_BODY]

    @property
    def large(self) -> list[str]:
        return [p for p, b in self.bodies.items() if len(b) > SMALL_BODY]

    def make_cold(self) -> None:
        """Drop every file's pages; skip the test where the page cache cannot be dropped (tmpfs)."""
        drop_pages([self.root / p for p in self.bodies])
        probe = self.root / self.small[0]
        drop_pages([probe])
        fd = os.open(probe, os.O_RDONLY)
        try:
            if os.preadv(fd, [bytearray(len(self.bodies[self.small[0]]))], 0, os.RWF_NOWAIT) > 0:
                pytest.skip("the page cache of this file system cannot be dropped")
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        drop_pages([probe])  # the attempt above started reading it


class Spy:
    """Counts the server's cold detections and records each batch job (bodies and bytes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cold = 0
        self.jobs: list[tuple[int, int]] = []
        self.before_read: Callable[[Batch], None] | None = None
        real_cached, real_read = read_cached_really, Batch.read

        def read_cached(fd: int, size: int) -> bytes | bytearray | None:
            data = real_cached(fd, size)
            self.cold += data is None
            return data

        def read(batch: Batch) -> None:
            self.jobs.append((len(batch.unread), sum(u.later.size for u in batch.unread)))
            if self.before_read is not None:
                self.before_read(batch)
            real_read(batch)

        monkeypatch.setattr(answer_module, "read_cached", read_cached)
        monkeypatch.setattr(Batch, "read", read)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@pytest.fixture
def repo(tmp_path: Path) -> ColdRepo:
    return ColdRepo(tmp_path / "repo", small=120, large=3, sizes=(1, 20_000))


@pytest.fixture
def records() -> list[AccessRecord]:
    return []


@pytest.fixture
def server(repo: ColdRepo, records: list[AccessRecord]) -> Iterator[RepositoryServer]:
    with make_server({NAME: repo.root}, access_log=records.append) as srv:
        srv.start_background()
        yield srv


def expected(repo: ColdRepo, method: str, path: str) -> tuple[int, bytes]:
    body = repo.bodies.get(path)
    if body is None:
        return 404, b"" if method == "HEAD" else NOT_FOUND
    return 200, b"" if method == "HEAD" else body


def test_cold_pipeline_is_answered_in_order_by_few_jobs(
    server: RepositoryServer, repo: ColdRepo, spy: Spy, records: list[AccessRecord]
) -> None:
    """GETs, HEADs, 404s, large bodies and the manifest, all cold, in one pipeline."""
    rng = random.Random(5)
    targets = [*repo.small, *repo.small[:30], *repo.large, ".cvmfspublished", "data/00/missing", "data/txn/x"]
    plan = [("HEAD" if rng.random() < 0.15 else "GET", rng.choice(targets)) for _ in range(300)]
    repo.make_cold()
    with connect(server.port) as sock:
        sock.sendall(b"".join(get(p, m) for m, p in plan))
        answers = recv_responses(sock, [m for m, _ in plan])
    assert [(status, body) for status, _, body in answers] == [expected(repo, m, p) for m, p in plan]
    for (method, path), (_, headers, _) in zip(plan, answers, strict=True):
        if path in repo.bodies:
            assert headers["Content-Length"] == str(len(repo.bodies[path])), (method, path)
        assert headers["Connection"] == "keep-alive"
    deadline = time.monotonic() + 5
    while len(records) < len(plan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(r.method, r.target.rsplit(NAME + "/", 1)[1], r.status) for r in records] == [
        (m, p, expected(repo, m, p)[0]) for m, p in plan
    ]
    assert [r.sent for r in records] == [len(expected(repo, m, p)[1]) for m, p in plan]
    small_gets = sum(m == "GET" and p in repo.small for m, p in plan)
    assert spy.cold >= 1  # the disk path was taken for real
    assert sum(n for n, _ in spy.jobs) >= small_gets // 2  # most bodies were read aside
    assert len(spy.jobs) <= small_gets // 8  # ... by few jobs (one per cold file before batches)
    assert all(n <= MAX_COLD and size < READ_AHEAD + SMALL_BODY for n, size in spy.jobs)


def test_connection_close_and_404_in_the_middle_of_a_cold_batch(
    server: RepositoryServer, repo: ColdRepo, spy: Spy
) -> None:
    a, b, c, d = repo.small[:4]
    stream = (
        get(a) + get(b, "HEAD") + get("data/00/gone") + get(c, extra="Connection: close\r\n") + get(d)
    )  # d is never answered
    repo.make_cold()
    with connect(server.port) as sock:
        sock.sendall(stream)
        answers = split_responses(read_until_closed(sock), ["GET", "HEAD", "GET", "GET"])
    assert [(s, body) for s, _, body in answers] == [
        (200, repo.bodies[a]),
        (200, b""),
        (404, NOT_FOUND),
        (200, repo.bodies[c]),
    ]
    assert [h["Connection"] for _, h, _ in answers] == ["keep-alive"] * 3 + ["close"]
    assert spy.cold >= 1 and len(spy.jobs) == 1


def test_expect_100_continue_inside_a_cold_batch(server: RepositoryServer, repo: ColdRepo) -> None:
    a, b = repo.small[:2]
    stream = get(a) + get(b, extra="Expect: 100-continue\r\nConnection: close\r\n")
    repo.make_cold()
    with connect(server.port) as sock:
        sock.sendall(stream)
        data = read_until_closed(sock)
    first, rest = data.split(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert split_responses(first, ["GET"])[0][2] == repo.bodies[a]
    assert split_responses(rest, ["GET"])[0][2] == repo.bodies[b]


@pytest.mark.parametrize("change", ["shrink", "vanish"])
def test_file_changed_while_its_cold_batch_is_read(
    server: RepositoryServer, repo: ColdRepo, spy: Spy, change: str
) -> None:
    """A file truncated before the job reads it ends the connection after its short body (the
    length was announced); one removed meanwhile is still served whole from its descriptor."""
    a, victim, c = _three(repo)

    def before_read(batch: Batch) -> None:
        if change == "shrink":
            os.truncate(repo.root / victim, 50)
        else:
            os.unlink(repo.root / victim)

    spy.before_read = before_read
    stream = get(a) + get(victim) + get(c)
    repo.make_cold()
    with connect(server.port) as sock:
        sock.sendall(stream)
        if change == "vanish":
            answers = recv_responses(sock, ["GET"] * 3)
            assert [body for _, _, body in answers] == [repo.bodies[p] for p in (a, victim, c)]
            return
        data = read_until_closed(sock)
    first = split_responses(data[: data.index(b"HTTP/1.1", 1)], ["GET"])[0]
    assert first[2] == repo.bodies[a]
    head, body = data[data.index(b"HTTP/1.1", 1) :].split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(repo.bodies[victim])}\r\n".encode() in head
    assert head.endswith(b"Connection: close") and body == repo.bodies[victim][:50]


def _three(repo: ColdRepo) -> tuple[str, str, str]:
    """Three small objects of more than 100 bytes."""
    a, b, c = [p for p in repo.small if len(repo.bodies[p]) > 100][:3]
    return a, b, c


def test_slow_client_holds_a_bounded_amount_of_answers(tmp_path: Path, spy: Spy) -> None:
    """A client that pipelines 20 MB of cold answers and reads nothing makes the server hold at
    most about one batch and one write of cached answers beyond the transport's high-water mark;
    it gets everything in order once it reads."""
    repo = ColdRepo(tmp_path / "repo", small=400, large=0, sizes=(40_000, SMALL_BODY))
    paths = repo.small
    with make_server({NAME: repo.root}) as srv:
        srv.start_background()
        repo.make_cold()
        sock = connect(srv.port)
        stream = b"".join(get(p) for p in paths)
        sender = threading.Thread(target=sock.sendall, args=(stream,), daemon=True)
        sender.start()
        peak, last_change, last = 0, time.monotonic(), -1
        while time.monotonic() - last_change < 1.0:  # until the server stops adding answers
            sizes = [c.transport.get_write_buffer_size() for c in list(srv.connections) if c.transport]
            total = sum(sizes)
            peak = max(peak, total)
            if total != last:
                last, last_change = total, time.monotonic()
            time.sleep(0.02)
        # below the high-water mark, plus answers written before a batch, plus one batch
        assert (
            0
            < peak
            <= 64 * 1024 + (MAX_BATCH + SMALL_BODY + HEAD_BYTES) + (READ_AHEAD + SMALL_BODY + HEAD_BYTES)
        )
        answers = recv_responses(sock, ["GET"] * len(paths))
        sender.join(10)
        sock.close()
    assert [body for _, _, body in answers] == [repo.bodies[p] for p in paths]
    assert spy.jobs and all(size < READ_AHEAD + SMALL_BODY for _, size in spy.jobs)


def test_no_descriptor_leaks_when_clients_vanish_during_cold_jobs(tmp_path: Path, spy: Spy) -> None:
    """Clients that reset, and a server stopped, while slow jobs read their batches: every
    descriptor is closed in the end, and nothing is logged as an error."""
    repo = ColdRepo(tmp_path / "repo", small=60, large=2, sizes=(1, 30_000))
    started: list[str] = []  # the first request of each job, once the job runs
    lock = threading.Lock()

    def slow_disk(batch: Batch) -> None:
        first = batch.first_request()
        with lock:
            started.append(first.target if first is not None else "")
        time.sleep(0.3)

    def wait_for_a_job(paths: list[str]) -> None:
        """Until a job reading the batch of one of ``paths`` runs (bounded: a loaded machine
        may take a while to get there; the test is about what happens meanwhile)."""
        targets = {f"/cvmfs/{NAME}/{p}" for p in paths}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if targets.intersection(started):
                    return
            time.sleep(0.01)
        raise AssertionError(f"no job read any of {len(paths)} cold objects in 30 s")

    spy.before_read = slow_disk

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    srv = make_server({NAME: repo.root})
    srv.start_background()
    repo.make_cold()
    socks = []
    for i in range(6):
        sock = connect(srv.port)
        mine = repo.small[i * 10 : i * 10 + 10] + repo.large
        sock.sendall(b"".join(get(p) for p in mine))
        wait_for_a_job(mine)
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # reset while its batch is being read
        else:
            socks.append(sock)
    srv.stop()  # while the last job still sleeps
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 10
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before
    assert spy.jobs


def test_batch_closed_before_its_job_runs(tmp_path: Path) -> None:
    """A job that starts after the connection gave up on it reads nothing; every descriptor is
    closed exactly once, whichever side comes first."""
    files = []
    for i in range(3):
        (tmp_path / str(i)).write_bytes(b"x" * (i + 1))
        files.append(tmp_path / str(i))

    def batch_of_three() -> tuple[Batch, list[int]]:
        batch, fds = Batch(), []
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            batch.add(Request("GET", "/", True), False, Deferred(fd, path.stat().st_size, False, False))
        return batch, fds

    def closed(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return True
        return False

    batch, fds = batch_of_three()
    batch.close()
    assert all(closed(fd) for fd in fds)
    batch.read()  # nothing to read, nothing closed twice
    assert [u.data for u in batch.unread] == [b"", b"", b""]
    batch, fds = batch_of_three()
    batch.read()
    assert all(closed(fd) for fd in fds)
    assert [u.data for u in batch.unread] == [b"x", b"xx", b"xxx"]
    batch.close()
    batch.close_when_done(None)
