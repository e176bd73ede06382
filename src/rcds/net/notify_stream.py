"""Subscribing to a broker's revision notifications, reconnecting after every failure.

:class:`Subscription` speaks what a stock client speaks: ``GET <server>/notifications/subscribe``
with the body ``{"version":1,"repository":"<fqrn>"}``, then reads the ``text/event-stream``.
Iterating over it yields the :class:`~rcds.format.notification.Activity` messages of the
repository, unverified (they are hints: see :mod:`rcds.client.fetch.notifications`). When the
stream ends, breaks, stays silent for ``idle_timeout`` seconds or cannot be opened, it subscribes
again after a pause that starts at ``backoff[0]`` and doubles (with jitter) up to ``backoff[1]``;
the broker sends its last message again on every subscription, so nothing is missed that it knew.
:meth:`Subscription.close` (from any thread) ends the iteration.

:func:`subscribe_async` gives the same messages as an async iterator (the blocking reader runs
in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

from rcds.errors import InputError, NetworkError
from rcds.format.notification import Activity, build_subscription, check_repository, parse_activity
from rcds.format.sse import EventDecoder
from rcds.net.notify_post import check_server, connect

log = logging.getLogger("rcds.net.notify")

IDLE_TIMEOUT = 600.0
BACKOFF = (0.1, 30.0)
STABLE = 5.0
"""A stream that lasted this long (seconds) resets the reconnect pause to its start."""


class Subscription:
    """An endless, reconnecting subscription to one repository's notifications (thread-safe close)."""

    def __init__(
        self,
        server: str,
        repository: str,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = 10.0,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self.server = check_server(server)
        self.repository = check_repository(repository)
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff
        self.connected = threading.Event()
        """Set while a stream is open (tests and status)."""
        self.connects = 0
        self.last_error: str | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    def __iter__(self) -> Iterator[Activity]:
        pause = self.backoff[0]
        while not self._closed.is_set():
            started = time.monotonic()
            try:
                yield from self._stream()
            except (OSError, http.client.HTTPException, NetworkError, InputError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                if not self._closed.is_set():
                    log.info("notifications of %s from %s: %s", self.repository, self.server, self.last_error)
            finally:
                self.connected.clear()
                self._drop()
            if time.monotonic() - started >= STABLE:
                pause = self.backoff[0]
            if self._closed.wait(pause * random.uniform(0.5, 1.5)):
                return
            pause = min(pause * 2, self.backoff[1])

    def _stream(self) -> Iterator[Activity]:
        conn, path = connect(self.server + "/notifications/subscribe", self.connect_timeout)
        with self._lock:
            if self._closed.is_set():
                conn.close()
                return
            self._conn = conn
        conn.request(
            "GET",
            path,
            body=build_subscription(self.repository),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream", "User-Agent": "rcds"},
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise NetworkError(
                f"{self.server} refused the subscription: HTTP {resp.status} {resp.read(300)!r}"
            )
        if not resp.getheader("Content-Type", "").startswith("text/event-stream"):
            raise NetworkError(
                f"{self.server} did not answer with an event stream; is it a notification broker?"
            )
        if conn.sock is not None:
            conn.sock.settimeout(self.idle_timeout)
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connects += 1
        self.connected.set()
        decoder = EventDecoder()
        while not self._closed.is_set():
            try:
                chunk = resp.read1(65536)
            except TimeoutError:
                raise NetworkError(f"no event from {self.server} for {self.idle_timeout:.0f} s") from None
            if not chunk:
                raise NetworkError(f"{self.server} ended the stream")
            for data in decoder.feed(chunk):
                try:
                    activity = parse_activity(data)
                except InputError as exc:
                    log.warning("ignoring a malformed notification from %s: %s", self.server, exc)
                    continue
                if activity.repository == self.repository:
                    yield activity

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        """End the iteration (a blocked read returns at once)."""
        self._closed.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


async def subscribe_async(server: str, repository: str, **kw: float) -> AsyncIterator[Activity]:
    """The messages of :class:`Subscription` as an async iterator (closing it stops the thread)."""
    sub = Subscription(server, repository, **kw)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Activity] = asyncio.Queue(maxsize=64)

    def put(a: Activity) -> None:
        if queue.full():  # the consumer is behind: only the newest revision matters
            queue.get_nowait()
        queue.put_nowait(a)

    def pump() -> None:
        for a in sub:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(put, a)

    thread = threading.Thread(target=pump, name=f"rcds-notify-{repository}", daemon=True)
    thread.start()
    try:
        while True:
            yield await queue.get()
    finally:
        sub.close()
        await asyncio.to_thread(thread.join, 10)
