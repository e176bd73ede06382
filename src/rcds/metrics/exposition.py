"""``/metrics`` in the Prometheus text format: rendering a registry, and a standalone server.

The publishing service answers ``/metrics`` from its own web application with :func:`render`;
``rcds replica run`` and the mount daemon, which have none, call :func:`start_server`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server

from rcds.errors import ConfigError

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of the text exposition format."""


def render(registry: CollectorRegistry) -> bytes:
    """The registry's samples in the Prometheus text format."""
    return generate_latest(registry)


@dataclass
class MetricsServer:
    """A running standalone ``/metrics`` server; :meth:`stop` shuts it down."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_server(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host} port {port}: {exc.strerror or exc}; choose another port"
        ) from exc
    return MetricsServer(server, thread)
