"""Run a whole service (API, workers, repository server) in a background thread of this process.

Used by ``rcds demo`` and by tests; ``rcds server run`` runs the same pieces in the foreground.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from rcds.errors import RcdsError
from rcds.service.app import serve
from rcds.service.config import ServiceConfig
from rcds.service.core import Service, init_repositories


class ServiceThread:
    """A started service; ``url`` is the pubapi base, ``repo_url(name)`` a repository's URL."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] | None = None,
        background: bool = True,
        init: bool = True,
    ) -> None:
        if init:
            init_repositories(config, clock) if clock else init_repositories(config)
        self.service = Service(config, clock=clock) if clock else Service(config)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.service.start(background=background)
        self._thread = threading.Thread(target=self._run, name="rcds-pubapi", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            self.service.stop()
            raise RcdsError(f"the pubapi did not start: {self._error}")

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await serve(self.service, ready=ready, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    def repo_url(self, name: str) -> str:
        """``http://host:port/cvmfs/<name>`` of a served repository."""
        assert self.service.repo_server is not None
        return self.service.repo_server.url_for(name)

    def stop(self) -> None:
        """Stop the API and the service."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.service.stop()

    def __enter__(self) -> ServiceThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
