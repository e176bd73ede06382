"""Run a whole service (API, workers, repository server) in a background thread of this process.

Used by ``rcds demo`` and by tests; ``rcds server run`` runs the same pieces in the foreground.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rcds.errors import RcdsError
from rcds.service.app import serve
from rcds.service.config import ServiceConfig
from rcds.service.core import Service, init_repositories
from rcds.serving_thread import ServingThread


class ServiceThread(ServingThread):
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
        self.service.start(background=background)

        async def run(ready: Callable[[str], None], stop: asyncio.Event) -> None:
            await serve(self.service, ready=ready, stop=stop)

        try:
            super().__init__(run, name="rcds-pubapi", what="the pubapi")
        except RcdsError:
            self.service.stop()
            raise

    def repo_url(self, name: str) -> str:
        """``http://host:port/cvmfs/<name>`` of a served repository."""
        assert self.service.repo_server is not None
        return self.service.repo_server.url_for(name)

    def stop(self) -> None:
        """Stop the API and the service."""
        super().stop()
        self.service.stop()
