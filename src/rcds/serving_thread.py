"""An asyncio server run in a background thread of this process until stopped.

The notification broker (:class:`~rcds.notify.server.BrokerThread`) and the whole service
(:class:`~rcds.service.runner.ServiceThread`) run this way in tests, benches, ``rcds demo`` and
embedding applications; ``rcds notify serve`` and ``rcds server run`` run the same coroutines in
the foreground instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Self

from rcds.errors import RcdsError

Serve = Callable[[Callable[[str], None], asyncio.Event], Awaitable[None]]
"""``serve(ready, stop)``: serves until ``stop`` is set; calls ``ready(url)`` once it listens."""


class ServingThread:
    """Runs ``serve(ready, stop)`` on an event loop of its own in a daemon thread named ``name``.

    The constructor returns once the server listens (``url`` is then its base URL) and raises
    :class:`~rcds.errors.RcdsError` naming ``what`` if it fails to start within ``timeout`` seconds.
    """

    def __init__(self, serve: Serve, *, name: str, what: str, timeout: float = 30.0) -> None:
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(serve,), name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RcdsError(f"{what} did not start: {self._error}")

    def _run(self, serve: Serve) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await serve(ready, self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        """Run ``fn`` on the server's loop and return its result (e.g. read counters)."""
        assert self._loop is not None

        async def wrapped() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def stop(self) -> None:
        """Stop serving and wait (up to 30 s) for the thread to end."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
