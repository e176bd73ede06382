"""The notification broker: fans revision notifications out to subscribers, stock-compatible.

Routes (under ``""`` and ``/api/v1``, the stock gateway's prefix, so either base URL works):

* ``GET /notifications/subscribe`` with the body ``{"version":1,"repository":"<fqrn>"}`` (or the
  query ``?repository=<fqrn>``): a ``text/event-stream`` of ``data: <activity>\\n\\n`` events.
* ``POST /notifications/publish`` with an activity message: ``{"status":"ok"}``; the message is
  checked (format, manifest parses and names the repository) and re-serialised on one line.

Like stock's gateway, the broker keeps the last message of every repository and sends it to a new
subscriber at once (a subscriber that was away catches up without waiting for the next revision).

Cost and fairness: a subscription is one waiting coroutine. Publishing only drops the event into
each subscription's single slot (one repository per subscription, so a newer revision replaces a
not-yet-written older one: coalescing loses nothing) and wakes it; each subscription writes on its
own. The socket send buffer is capped (``SEND_BUFFER``), so a subscriber that stops reading costs
a bounded amount of memory; when a write has not completed after ``write_timeout`` seconds the
subscriber is disconnected. No keep-alive comments are sent, because stock clients treat any line
that is not an activity as an error; dead peers are found by TCP keep-alive instead. On shutdown
subscriber connections are aborted (not ended cleanly), because a stock client stops for good
after a clean end of its stream but re-subscribes after an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from rcds.errors import InputError, IntegrityError
from rcds.format.notification import (
    MAX_MESSAGE,
    MAX_SUBSCRIPTION,
    Activity,
    check_repository,
    parse_activity,
    parse_subscription,
)
from rcds.format.sse import encode_event

log = logging.getLogger("rcds.notify.broker")

PREFIXES = ("", "/api/v1")
LOOPBACK = ("127.0.0.0/8", "::1/128")
SEND_BUFFER = 64 * 1024
"""Kernel send buffer of a subscriber connection (bytes): bounds what a stuck reader holds."""
KEEPALIVE = (60, 10, 6)
"""TCP keep-alive of subscriber connections: idle seconds, probe interval, probes."""


@dataclass
class BrokerStats:
    """Counters of a broker since it started."""

    published: int = 0
    delivered: int = 0
    coalesced: int = 0
    slow_disconnects: int = 0
    refused: int = 0


@dataclass(eq=False)
class _Subscription:
    repository: str
    pending: bytes | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: bytes, stats: BrokerStats) -> None:
        if self.pending is not None:
            stats.coalesced += 1
        self.pending = event
        self.wake.set()


class Broker:
    """Keeps subscriptions and fans activity messages out; mount with :meth:`attach`."""

    def __init__(
        self,
        *,
        allow_publish: Iterable[str] = LOOPBACK,
        write_timeout: float = 30.0,
        max_subscribers: int = 100_000,
        max_repositories: int = 100_000,
        check_interval: float = 30.0,
    ) -> None:
        try:
            self.allow_publish = [ipaddress.ip_network(n, strict=False) for n in allow_publish]
        except ValueError as exc:
            raise InputError(f"allowed publisher network: {exc}; give CIDRs like 10.0.0.0/8") from None
        self.write_timeout = write_timeout
        self.max_subscribers = max_subscribers
        self.max_repositories = max_repositories
        self.check_interval = check_interval
        self.stats = BrokerStats()
        self._subs: dict[str, set[_Subscription]] = {}
        self._count = 0
        self._last: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._transports: set[asyncio.Transport] = set()

    # -- wiring ------------------------------------------------------------------------
    def attach(self, app: web.Application, prefixes: Iterable[str] = PREFIXES) -> None:
        """Add the broker's routes and start/stop hooks to an aiohttp application."""
        for p in prefixes:
            app.router.add_route("GET", f"{p}/notifications/subscribe", self._subscribe)
            app.router.add_route("POST", f"{p}/notifications/publish", self._publish)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)

    async def _startup(self, _app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False

    async def _shutdown(self, _app: web.Application) -> None:
        self.close()

    def close(self) -> None:
        """Abort every subscriber connection (they re-subscribe elsewhere or later)."""
        self._closing = True
        for subs in self._subs.values():
            for s in subs:
                s.wake.set()
        for t in list(self._transports):
            t.abort()

    # -- publishing --------------------------------------------------------------------
    def publish(self, activity: Activity) -> int:
        """Fan ``activity`` out (call on the broker's loop); returns how many subscriptions got it."""
        line = activity.to_json()
        self._last[activity.repository] = line
        self._last.move_to_end(activity.repository)
        while len(self._last) > self.max_repositories:
            self._last.popitem(last=False)
        self.stats.published += 1
        event = encode_event(line)
        subs = self._subs.get(activity.repository, ())
        for s in subs:
            s.offer(event, self.stats)
        return len(subs)

    def publish_threadsafe(self, activity: Activity) -> None:
        """:meth:`publish` from another thread (e.g. a publish worker); dropped if not running."""
        loop = self._loop
        if loop is None or loop.is_closed():
            log.info(
                "notification for %s not sent: the broker is not running (no subscriber can hear it)",
                activity.repository,
            )
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.publish, activity)

    def last(self, repository: str) -> Activity | None:
        """The last message kept for a repository."""
        line = self._last.get(repository)
        return parse_activity(line) if line is not None else None

    def subscribers(self, repository: str | None = None) -> int:
        """How many subscriptions are open (for one repository, or all)."""
        if repository is None:
            return self._count
        return len(self._subs.get(repository, ()))

    def _allowed(self, remote: str | None) -> bool:
        if not self.allow_publish:
            return False
        try:
            addr = ipaddress.ip_address((remote or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self.allow_publish)

    async def _publish(self, request: web.Request) -> web.Response:
        if not self._allowed(request.remote):
            self.stats.refused += 1
            return _fail(403, f"{request.remote} may not publish notifications here (see --allow-publish)")
        body = await _body(request, MAX_MESSAGE)
        if body is None:
            return _fail(413, f"a notification is at most {MAX_MESSAGE} bytes")
        try:
            activity = parse_activity(body)
            activity.signed_manifest()
        except (InputError, IntegrityError) as exc:
            self.stats.refused += 1
            return _fail(400, str(exc))
        n = self.publish(activity)
        return web.json_response({"status": "ok", "subscribers": n})

    # -- subscribing -------------------------------------------------------------------
    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request, MAX_SUBSCRIPTION)
        if body is None:
            return _fail(413, f"a subscription is at most {MAX_SUBSCRIPTION} bytes")
        try:
            if not body.strip() and "repository" in request.query:
                repository = check_repository(request.query["repository"])
            else:
                repository = parse_subscription(body)
        except InputError as exc:
            return _fail(400, str(exc))
        if self._closing:
            return _fail(503, "the broker is shutting down; subscribe again shortly")
        if self._count >= self.max_subscribers:
            return _fail(503, f"the broker has its maximum of {self.max_subscribers} subscribers; try later")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            return resp
        _tune(transport)
        sub = _Subscription(repository)
        self._subs.setdefault(repository, set()).add(sub)
        self._transports.add(transport)
        self._count += 1
        last = self._last.get(repository)
        if last is not None:
            sub.offer(encode_event(last), self.stats)
        try:
            await self._serve(sub, resp, transport)
        finally:
            self._count -= 1
            self._transports.discard(transport)
            subs = self._subs.get(repository)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[repository]
        if self._closing or transport.is_closing():
            transport.abort()  # an error for the client: stock re-subscribes only after errors
        return resp

    async def _serve(
        self, sub: _Subscription, resp: web.StreamResponse, transport: asyncio.Transport
    ) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self.check_interval):  # no extra task, unlike wait_for
                    await sub.wake.wait()
            except TimeoutError:
                if transport.is_closing():
                    return
                continue
            sub.wake.clear()
            event, sub.pending = sub.pending, None
            if event is None or self._closing:
                continue
            try:
                async with asyncio.timeout(self.write_timeout):
                    await resp.write(event)
            except TimeoutError:
                self.stats.slow_disconnects += 1
                log.warning(
                    "subscriber of %s read nothing for %.0f s; disconnected",
                    sub.repository,
                    self.write_timeout,
                )
                transport.abort()
                return
            except (ConnectionError, RuntimeError):
                return
            self.stats.delivered += 1


async def _body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None if it is longer than ``limit`` (read no further then)."""
    if (request.content_length or 0) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _tune(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def _fail(status: int, reason: str) -> web.Response:
    return web.json_response({"status": "error", "reason": " ".join(reason.split())}, status=status)
