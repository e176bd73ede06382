"""Loopback fixtures for the network layer: scriptable HTTP repository servers and a real Squid.

:class:`RepoServer` serves files below ``/cvmfs/<FQRN>/`` from a temp dir with stock-like
headers and can be told to misbehave (error status, wrong body, truncated body, stalled
body, slow trickle, dropped connection, delay) for some or all paths, some or all times.
:class:`Squid` runs ``/usr/sbin/squid -N`` with a private configuration on a free loopback
port.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rcds.testing.processes import free_port
from rcds.testing.squid import SQUID
from rcds.testing.squid import Squid as _Squid

from netkit import FQRN, RawConn, RawServer


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """Records back-off sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class Fault:
    """One scripted misbehaviour; ``times=None`` means forever."""

    kind: str
    status: int = 500
    seconds: float = 0.0
    times: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """A request the server received: path below the repository, headers, client port."""

    path: str
    headers: dict[str, str]
    client_port: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    repo: RepoServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-response are part of the tests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.repo._conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.repo._conns.discard(self.connection)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        repo = self.server.repo
        prefix = f"/cvmfs/{FQRN}/"
        rel = self.path[len(prefix) :] if self.path.startswith(prefix) else self.path
        # Through a proxy the request line carries an absolute URL.
        if "://" in rel:
            rel = rel.split(prefix, 1)[-1]
        repo.requests.append(
            Seen(rel, {k.lower(): v for k, v in self.headers.items()}, self.client_address[1])
        )
        fault = repo._take_fault(rel)
        if fault is not None and fault.kind == "close":
            self.close_connection = True
            return
        if fault is not None and fault.kind == "delay":
            repo._stopping.wait(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "status":
            self._send(fault.status, b"scripted error\n", fault.headers, head)
            return
        file = repo.root / urllib.parse.unquote(rel)
        if not rel or not file.is_file():
            self._send(404, b"not found\n", {}, head)
            return
        data = file.read_bytes()
        if fault is None:
            self._send(200, data, {}, head)
        elif fault.kind == "wrong_body":
            self._send(200, bytes(b ^ 0x5A for b in data), {}, head)
        elif fault.kind in ("truncate", "stall", "trickle"):
            self._send_headers(200, len(data), {})
            half = max(1, len(data) // 2)
            if fault.kind == "trickle":
                for i in range(0, len(data), 8):
                    if repo._stopping.wait(fault.seconds):
                        break
                    self._write(data[i : i + 8])
            else:
                self._write(data[:half])
                if fault.kind == "stall":
                    repo._stopping.wait(fault.seconds)
                    self._write(data[half:])
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise AssertionError(f"unknown fault {fault.kind}")

    def _send_headers(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        rel = self.path.rsplit("/", 1)[-1]
        max_age = 61 if rel.startswith(".cvmfs") else 259200
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", f"max-age={max_age}")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: int, body: bytes, extra: dict[str, str], head: bool) -> None:
        self._send_headers(status, len(body), extra)
        if not head:
            self._write(body)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(data)
            self.wfile.flush()


class RepoServer:
    """A scriptable repository web server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "cvmfs" / FQRN
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Seen] = []
        self.faults: dict[str | None, Fault] = {}
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The repository base URL, as in CVMFS_SERVER_URL."""
        return f"{self.url}/cvmfs/{FQRN}"

    def put(self, path: str, data: bytes) -> None:
        f = self.root / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)

    def fail(self, kind: str, path: str | None = None, **kw: object) -> None:
        """Misbehave for ``path`` (or every path) as ``Fault(kind, **kw)`` says."""
        self.faults[path] = Fault(kind, **kw)  # type: ignore[arg-type]

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            key: str | None = path if path in self.faults else None
            fault = self.faults.get(key)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[key]
            return fault

    def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.repo = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Die like a crashed server: stop listening and cut every open connection."""
        httpd, self._httpd = self._httpd, None
        self._stopping.set()
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[[], RepoServer]]:
    """Factory of :class:`RepoServer` instances, all stopped at teardown."""
    servers: list[RepoServer] = []

    def make() -> RepoServer:
        s = RepoServer(tmp_path / f"srv{len(servers)}")
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


class Squid(_Squid):
    """A real Squid proxy on a free loopback port, in the foreground (``-N``); memory cache only."""

    def __init__(self, cache_mem_mb: int = 16) -> None:
        super().__init__(
            [
                "acl localnet src 127.0.0.0/8",
                "http_access allow localnet",
                "http_access deny all",
                f"cache_mem {cache_mem_mb} MB",
                "maximum_object_size_in_memory 1 MB",
            ]
        )


def _need_squid() -> None:
    if SQUID is None:
        pytest.skip("squid is not installed (apt-get install squid)")


@pytest.fixture(scope="session")
def squid() -> Iterator[Squid]:
    """One Squid for the whole session (skips when squid is not installed)."""
    _need_squid()
    s = Squid()
    yield s
    s.stop()


@pytest.fixture
def squid_factory() -> Iterator[Callable[[], Squid]]:
    """Start extra Squids for one test (e.g. to kill them); all stopped at teardown."""
    _need_squid()
    started: list[Squid] = []

    def make() -> Squid:
        s = Squid()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def dead() -> str:
    """The URL of a loopback port nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock (moves only when a test advances it)."""
    return FakeClock()


@pytest.fixture
def sleep() -> FakeSleep:
    """A fake sleep that records back-off sleeps instead of waiting."""
    return FakeSleep()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[RawConn], None]], RawServer]]:
    """Factory of :class:`RawServer` instances, all stopped at teardown."""
    started: list[RawServer] = []

    def make(script: Callable[[RawConn], None]) -> RawServer:
        s = RawServer(script)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
