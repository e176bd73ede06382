"""A static HTTP/1.1 server for CernVM-FS repositories, behaving like a stratum 0/1 web server.

``GET``/``HEAD /cvmfs/<name>/<path>`` returns ``<dir>/<path>`` of repository ``<name>``
(see :mod:`rcds.serve.handler` for which paths are servable). Like the stock Apache setup,
``.cvmfs*`` root files are ``application/x-cvmfs`` with a short ``max-age`` (61 s) and
objects are ``application/octet-stream`` cached for 3 days; there is no ``Last-Modified``
and no ``ETag``, connections are kept alive, and anything missing or refused is a 404.
Bodies go out with ``sendfile`` from a descriptor opened once, so an atomic rename of
``.cvmfspublished`` during a request never produces a mixed body. Request handling and the
path rules live in :mod:`rcds.serve.handler`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path

from rcds.errors import ConfigError, NotFoundError
from rcds.serve.handler import (
    OBJECT_CONTENT_TYPE,
    ROOT_CONTENT_TYPE,
    URL_PREFIX,
    AccessLog,
    AccessRecord,
    RequestHandler,
    is_valid_repository_name,
)

__all__ = [
    "OBJECT_CONTENT_TYPE",
    "ROOT_CONTENT_TYPE",
    "AccessLog",
    "AccessRecord",
    "RepositoryServer",
    "make_server",
]

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.1
_Request = socket.socket | tuple[bytes, socket.socket]


class RepositoryServer(ThreadingHTTPServer):
    """A threading HTTP server for one or more repository directories (see :func:`make_server`).

    Use :meth:`start_background` and :meth:`stop`, or :meth:`serve_forever` in the current
    thread (stopped by :meth:`stop` from another thread). As a context manager the server is
    stopped on exit; entering does *not* start it.
    """

    daemon_threads = True
    request_queue_size = 128

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
        self._lock = threading.Lock()
        self._repos: dict[str, str] = {}
        self._connections: set[_Request] = set()
        self._thread: threading.Thread | None = None
        self._running = self._stopped = False
        for name, path in repos.items():
            self.add_repository(name, path)
        host = host.strip("[]")
        self._host = host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), RequestHandler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host} port {port}: {exc.strerror or exc}; choose another host or port"
            ) from exc

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup ``HTTPServer`` does."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = self._host
        self.server_port = self.port

    @property
    def port(self) -> int:
        """The TCP port the server listens on (useful after binding port 0)."""
        return int(self.socket.getsockname()[1])

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
            raise ConfigError(f"{name!r} is not a valid repository name; use letters, digits, '.', '_', '-'")
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
        with self._lock:
            root = self._repos.get(name)
        if root is None:
            raise NotFoundError(f"repository {name} is not served here; add it with add_repository()")
        return root

    def url_for(self, name: str) -> str:
        """The base URL of repository ``name``, e.g. ``http://127.0.0.1:8000/cvmfs/name``."""
        self.root_of(name)
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{URL_PREFIX}{name}"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`stop` (returns at once if already stopped)."""
        with self._lock:
            if self._stopped or self._running:
                return
            self._running = True
        try:
            super().serve_forever(poll_interval)
        finally:
            with self._lock:
                self._running = False

    def start_background(self) -> threading.Thread:
        """Serve from a new daemon thread and return it."""
        with self._lock:
            if self._stopped or self._thread is not None:
                raise ConfigError("this server was already started or stopped; make a new one")
            self._thread = threading.Thread(
                target=self.serve_forever, args=(_POLL_INTERVAL,), name=f"rcds-http-{self.port}", daemon=True
            )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            running = self._running
        if running:
            self.shutdown()  # no connection is accepted after this returns
        with self._lock:
            connections = list(self._connections)
        for request in connections:
            if isinstance(request, socket.socket):
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def __exit__(self, *args: object) -> None:
        self.stop()

    def process_request(self, request: _Request, client_address: object) -> None:
        """Track the connection (so :meth:`stop` can close it), then handle it in a thread."""
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _Request) -> None:
        """Forget and close a finished connection."""
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: _Request, client_address: object) -> None:
        """Log instead of printing to stderr; vanished clients only at DEBUG."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("connection from %s failed: %s", client_address, exc)
        else:
            log.error("error while serving %s", client_address, exc_info=True)


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
    :attr:`RepositoryServer.port`). ``idle_timeout`` closes idle keep-alive connections;
    ``access_log`` is called with an :class:`AccessRecord` per answered request (requests are
    also logged to the ``rcds.serve.http`` logger at DEBUG). Raises
    :class:`~rcds.errors.ConfigError` for bad settings or an address that cannot be bound.
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
