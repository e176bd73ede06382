"""A static HTTP/1.1 server for CernVM-FS repositories, behaving like a stratum 0/1 web server.

``GET``/``HEAD /cvmfs/<name>/<path>`` returns ``<dir>/<path>`` of repository ``<name>``
(see :mod:`rcds.serve.handler` for which paths are servable). Like the stock Apache setup,
``.cvmfs*`` root files are ``application/x-cvmfs`` with a short ``max-age`` (61 s) and
objects are ``application/octet-stream`` cached for 3 days; there is no ``Last-Modified``
and no ``ETag``, connections are kept alive (and may pipeline requests), and anything
missing or refused is a 404. Bodies come from a descriptor opened once, so an atomic rename
of ``.cvmfspublished`` during a request never produces a mixed body. One asyncio loop in one
thread serves every connection (:mod:`rcds.serve.connection`); this module holds the
listening socket, the served repositories and the loop's life cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from rcds.errors import ConfigError, NotFoundError
from rcds.serve.connection import Connection
from rcds.serve.handler import URL_PREFIX, AccessLog, AccessRecord, is_valid_repository_name
from rcds.serve.objects import ObjectGets
from rcds.serve.response import OBJECT_CONTENT_TYPE, ROOT_CONTENT_TYPE, Heads

__all__ = [
    "OBJECT_CONTENT_TYPE",
    "ROOT_CONTENT_TYPE",
    "AccessLog",
    "AccessRecord",
    "RepositoryServer",
    "make_server",
]

_BACKLOG = 512
_STOP_WAIT = 5.0


class RepositoryServer:
    """An HTTP server for one or more repository directories (see :func:`make_server`).

    Use :meth:`start_background` and :meth:`stop`, or :meth:`serve_forever` in the current
    thread (stopped by :meth:`stop` from another thread, or by Ctrl-C in the main thread). As
    a context manager the server is stopped on exit; entering does *not* start it. The socket
    is bound and listening from construction on (:attr:`port`, :attr:`server_address`).
    """

    def __init__(
        self,
        repos: Mapping[str, str | os.PathLike[str]],
        host: str,
        port: int,
        *,
        root_max_age: int,
        object_max_age: int,
        idle_timeout: float,
        access_log: AccessLog | None,
    ) -> None:
        for label, age in (("root_max_age", root_max_age), ("object_max_age", object_max_age)):
            if not isinstance(age, int) or isinstance(age, bool) or age < 0:
                raise ConfigError(f"{label} must be a non-negative number of seconds, not {age!r}")
        if idle_timeout <= 0:
            raise ConfigError(f"idle_timeout must be positive, not {idle_timeout!r}")
        self.root_max_age = root_max_age
        self.object_max_age = object_max_age
        self.idle_timeout = idle_timeout
        self.access_log = access_log
        self.heads = Heads(root_max_age, object_max_age)
        self.objects = ObjectGets(self.lookup)
        self.connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._repos: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Server | None = None
        self._stop_requested: asyncio.Event | None = None
        self._finished = threading.Event()
        self._running = self._stopped = False
        for name, path in repos.items():
            self.add_repository(name, path)
        host = host.strip("[]")
        self._host = host
        self.socket = _listen(host, port)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]

    @property
    def port(self) -> int:
        """The TCP port the server listens on (useful after binding port 0)."""
        return int(self.server_address[1])

    @property
    def repositories(self) -> dict[str, Path]:
        """A snapshot of the served repositories: name -> resolved directory."""
        with self._lock:
            return {name: Path(root) for name, root in self._repos.items()}

    def add_repository(self, name: str, path: str | os.PathLike[str]) -> None:
        """Serve the repository directory ``path`` as ``name`` from now on (thread safe).

        Adding the same name and directory again is a no-op. Raises
        :class:`~rcds.errors.ConfigError` for a bad name, a directory that does not exist,
        or a name already served from another directory.
        """
        if not is_valid_repository_name(name):
            raise ConfigError(
                f"{name!r} is not a valid repository name; use dot-separated labels of letters, digits, "
                "'_' and '-', like sw.example.org"
            )
        try:
            root = os.path.realpath(path, strict=True)
        except OSError as exc:
            raise ConfigError(f"cannot serve {name}: {path} is not accessible ({exc.strerror})") from None
        if not os.path.isdir(root) or root == os.sep:
            raise ConfigError(f"cannot serve {name}: {path} is not a repository directory")
        with self._lock:
            current = self._repos.setdefault(name, root)
        if current != root:
            raise ConfigError(f"{name} is already served from {current}; remove it first to serve {root}")

    def remove_repository(self, name: str) -> None:
        """Stop serving ``name`` (thread safe); raises :class:`~rcds.errors.NotFoundError` if absent."""
        with self._lock:
            if self._repos.pop(name, None) is None:
                raise NotFoundError(f"repository {name} is not served here")

    def root_of(self, name: str) -> str:
        """The resolved directory of repository ``name``; :class:`~rcds.errors.NotFoundError` if absent."""
        root = self.lookup(name)
        if root is None:
            raise NotFoundError(f"repository {name} is not served here; add it with add_repository()")
        return root

    def lookup(self, name: str) -> str | None:
        """The resolved directory of repository ``name``, or None (lock-free: one dict read)."""
        return self._repos.get(name)

    def url_for(self, name: str) -> str:
        """The base URL of repository ``name``, e.g. ``http://127.0.0.1:8000/cvmfs/name``."""
        self.root_of(name)
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{URL_PREFIX}{name}"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`stop` (returns at once if already stopped).

        ``poll_interval`` is accepted for compatibility with ``socketserver`` and unused.
        """
        with self._lock:
            if self._stopped or self._running:
                return
            self._running = True
        try:
            asyncio.run(self._serve())
        finally:
            with self._lock:
                self._running = False
                self._loop = None
            self.objects.close()
            self._close_socket()
            self._finished.set()

    def start_background(self) -> threading.Thread:
        """Serve from a new daemon thread and return it."""
        with self._lock:
            if self._stopped or self._thread is not None:
                raise ConfigError("this server was already started or stopped; make a new one")
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"rcds-http-{self.port}", daemon=True
            )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket (idempotent).

        Called from the serving thread itself (e.g. from an access-log callback), the listener
        and every connection are closed before this returns; no further request is answered.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, started = self._loop, self._running
        if loop is not None:
            if _running_loop() is loop:
                self._shutdown()
            else:
                with contextlib.suppress(RuntimeError):  # the loop may have just finished
                    loop.call_soon_threadsafe(self._shutdown)
        if started and _running_loop() is not loop:
            self._finished.wait(_STOP_WAIT)
        if not started:
            self._close_socket()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_STOP_WAIT)

    shutdown = server_close = stop  # the names socketserver users know

    def __enter__(self) -> RepositoryServer:
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()

    # -- the event loop ---------------------------------------------------------------------------
    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        with self._lock:
            if self._stopped:
                return
            self._loop, self._stop_requested = loop, stop_requested
        self._listener = await loop.create_server(
            lambda: Connection(self), sock=self.socket, backlog=_BACKLOG
        )
        sweeper = loop.create_task(self._sweep())
        try:
            await stop_requested.wait()
        finally:
            self._shutdown()
            sweeper.cancel()
            for _ in range(3):  # let the aborted transports close their sockets
                await asyncio.sleep(0)

    def _shutdown(self) -> None:
        """In the loop: stop listening, drop every connection, end :meth:`_serve`."""
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.abort(stopping=True)
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _sweep(self) -> None:
        """Close connections past their deadline (idle, slow heads, stalled readers)."""
        tick = min(1.0, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in [c for c in self.connections if c.deadline < now]:
                conn.timed_out()

    def _close_socket(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.socket.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host} port {port}: {exc.strerror or exc}; choose another host or port"
        ) from exc
    return sock


def make_server(
    repos: Mapping[str, str | os.PathLike[str]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    root_max_age: int = 61,
    object_max_age: int = 259200,
    idle_timeout: float = 60.0,
    access_log: AccessLog | None = None,
) -> RepositoryServer:
    """Create (bind, not yet start) a server for ``repos`` (name -> repository directory).

    ``host`` may be IPv4 or IPv6 (``"::1"``); port 0 picks a free port (see
    :attr:`RepositoryServer.port`). ``idle_timeout`` closes idle keep-alive connections (and
    ones that take that long for a request head, or to read an answer); ``access_log`` is
    called with an :class:`AccessRecord` per answered request, in the serving thread, once
    the answer was written to the connection (requests are also logged to the ``rcds.serve.http``
    logger at DEBUG). Raises :class:`~rcds.errors.ConfigError` for bad settings or an address
    that cannot be bound.
    """
    return RepositoryServer(
        repos,
        host,
        port,
        root_max_age=root_max_age,
        object_max_age=object_max_age,
        idle_timeout=idle_timeout,
        access_log=access_log,
    )
