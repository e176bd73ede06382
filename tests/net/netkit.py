"""Helpers of the network tests: a raw-socket HTTP server for faults real servers do not make.

Imported by the tests at run time (``conftest`` is not importable that way: every test
directory has its own).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rcds.net import DIRECT, Fetcher, NetSettings, ProxyConfig, Timeouts

if TYPE_CHECKING:
    from conftest import RepoServer

FQRN = "test.example.org"

#: Short timeouts and one quick retry: what most network tests want.
FAST = NetSettings(
    timeout=Timeouts(2, 2),
    timeout_direct=Timeouts(2, 2),
    low_speed_limit=0,
    max_retries=1,
    backoff_init=0.5,
    backoff_max=2,
)


def make_fetcher(
    servers: Sequence[RepoServer],
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    proxies: str = DIRECT,
    fallback: str | None = None,
    *,
    settings: NetSettings = FAST,
    **overrides: object,
) -> Fetcher:
    """A Fetcher of ``servers`` through ``proxies`` (a CVMFS_HTTP_PROXY string) on a test clock:
    ``settings`` with ``overrides``, and a fixed random seed (the same proxy order every run)."""
    return Fetcher(
        [s.base for s in servers],
        ProxyConfig.parse(proxies, fallback),
        settings._replace(**overrides),
        clock=clock,
        sleep=sleep,
        rng=random.Random(0),
    )


class RawConn:
    """One accepted connection of a :class:`RawServer`: read requests, write raw bytes."""

    def __init__(self, sock: socket.socket, index: int, server: RawServer) -> None:
        self.sock = sock
        self.index = index
        self.server = server
        self._buf = b""

    def request(self) -> str | None:
        """The next request head (pipelined ones are split correctly); None at EOF/error."""
        while b"\r\n\r\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self._buf += data
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        text = head.decode("latin-1")
        self.server.requests.append((self.index, text))
        return text

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self) -> None:
        """Close abruptly (no shutdown handshake beyond FIN)."""
        with contextlib.suppress(OSError):
            self.sock.close()


def response(body: bytes, status: str = "200 OK", extra: str = "", length: bool = True) -> bytes:
    """An HTTP/1.1 response with ``Content-Length`` (unless ``length`` is False)."""
    cl = f"Content-Length: {len(body)}\r\n" if length else ""
    return f"HTTP/1.1 {status}\r\n{cl}{extra}\r\n".encode() + body


def target_path(request: str) -> str:
    """The path below the repository of a request head (origin- or absolute-form)."""
    target = request.split(" ", 2)[1]
    return target.split(f"/cvmfs/{FQRN}/", 1)[-1]


class RawServer:
    """A loopback TCP server whose connections are handled by ``script(conn)`` in threads.

    For faults a real server does not produce. ``requests`` lists (connection index,
    request head); ``connections`` counts accepted connections. Every socket has a 10 s
    timeout, so a confused script cannot hang a test.
    """

    def __init__(self, script: Callable[[RawConn], None]) -> None:
        self.script = script
        self.requests: list[tuple[int, str]] = []
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/cvmfs/{FQRN}"

    def paths(self) -> list[str]:
        return [target_path(r) for _, r in self.requests]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(10)
            self._socks.append(sock)
            conn = RawConn(sock, self.connections, self)
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: RawConn) -> None:
        try:
            self.script(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(5)
