"""HTTP/1.1 pipelining for :meth:`Fetcher.fetch_many <rcds.net.fetcher.Fetcher.fetch_many>`.

Many small files are requested over a few kept-alive connections to the current route
(host, proxy): up to ``window`` requests are in flight per connection, sent in batches with
one ``sendall``, and the responses are read in order, round robin over the connections,
in the calling thread (so memory stays bounded: one body at a time is held). Correctness
never depends on pipelining working:

* a response that fails (error status, bad data, truncated, stalled, ...) sends its path
  through the ordinary fail-over loop, with this attempt counted as its first;
* when a connection ends at a response boundary (``Connection: close``, the server closed
  a kept-alive connection) its unanswered paths are sent again on another connection
  without counting as failures, and the window shrinks to what that connection served;
* when a connection breaks, its unanswered paths are queued again; a path that was lost
  with a connection twice goes through the ordinary :meth:`fetch` path.

Requests go to the route current when a connection is opened; fail-overs done by the
ordinary path are picked up by the next connection. ``https://`` routes are fetched one by
one through the ordinary path.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from rcds.errors import IntegrityError
from rcds.net.failures import Attempt, AttemptError, Failure, Outcome
from rcds.net.http1 import Connection, Pool, StaleConnectionError
from rcds.net.transport import Transport

T = TypeVar("T")

CONNECTIONS = 2
"""Connections per :func:`pipelined` call."""
_PLAIN = re.compile(r"[A-Za-z0-9._~-][A-Za-z0-9/._~-]*").fullmatch
"""Relative paths whose URL below a host is the host, ``/`` and the path as it is."""
WINDOW = 32
"""Requests in flight per connection."""
MAX_LOST = 2
"""Times a path may be lost with a connection before it goes the ordinary way."""
RECV_BYTES = 1 << 18
"""Bytes asked for per receive on a pipelined connection (answers queue up: fewer system calls)."""


class _Lane:
    """One pipelined connection to one route and the indices it has in flight, in order."""

    __slots__ = ("conn", "fresh", "host", "inflight", "make", "ok", "pool", "proxy", "served")

    def __init__(
        self, pool: Pool, conn: Connection, host: str, proxy: str, make: Callable[[str], bytes] | None
    ) -> None:
        self.pool = pool
        self.conn = conn
        self.fresh = not conn.reused
        self.host = host
        self.proxy = proxy
        self.make = make
        """Request bytes of a plain path below ``host`` on this lane's pool (None: prepare each)."""
        self.inflight: deque[int] = deque()
        self.served = 0
        self.ok = False


def pipelined(
    transport: Transport,
    paths: Sequence[str],
    validate: Callable[[int, bytes], T],
    *,
    route: Callable[[], tuple[str, str]],
    url_for: Callable[[str, str], str],
    fallback: Callable[[int, Attempt | None], T],
    mark_ok: Callable[[str, str], object],
    max_size: int | None = None,
    connections: int = CONNECTIONS,
    window: int = WINDOW,
) -> Iterator[tuple[int, T]]:
    """Yield ``(index, validate(index, body))`` for every path, in completion order.

    ``route()`` gives the current (host, proxy); ``url_for(host, path)`` a URL;
    ``fallback(index, prior)`` fetches one path through the ordinary fail-over loop (``prior``
    is the failed pipelined attempt, if any) and returns what ``validate`` made of it, or
    raises :class:`~rcds.net.failures.FetchError`; ``mark_ok(host, proxy)`` records a success.
    """
    pending: deque[int] = deque(range(len(paths)))
    lost = bytearray(len(paths))
    lanes: list[_Lane] = []
    state = {"window": max(1, window)}

    def requeue(lane: _Lane) -> None:
        """Queue the unanswered paths of a finished lane again (or mark them for fallback)."""
        lanes.remove(lane)
        for i in reversed(lane.inflight):
            lost[i] += 1
            pending.appendleft(i)
        lane.inflight.clear()

    def fill(lane: _Lane) -> None:
        """Send requests until ``window`` are in flight on ``lane`` (one ``sendall``)."""
        room = state["window"] - len(lane.inflight)
        if room <= 0 or not pending:
            return
        batch: list[bytes] = []
        make = lane.make
        while room and pending:
            i = pending[0]
            if lost[i] >= MAX_LOST:
                break
            path = paths[i]
            if make is not None and _PLAIN(path) is not None:  # object names: one concatenation
                request = make(path)
            else:
                try:
                    prepared = transport.prepare(url_for(lane.host, path), lane.proxy)
                except AttemptError:
                    break
                if prepared is None or prepared[0] is not lane.pool:
                    break
                request = prepared[1]
            pending.popleft()
            batch.append(request)
            lane.inflight.append(i)
            room -= 1
        if batch:
            lane.conn.send(b"".join(batch) if len(batch) > 1 else batch[0])

    try:
        while pending or lanes:
            # Paths lost twice, and everything when the route is not plain HTTP: one by one.
            while pending and lost[pending[0]] >= MAX_LOST:
                i = pending.popleft()
                yield i, fallback(i, None)
            while pending and len(lanes) < connections:
                host, proxy = route()
                i = pending[0]
                try:
                    prepared = transport.prepare(url_for(host, paths[i]), proxy)
                    conn = prepared[0].acquire() if prepared is not None else None
                except AttemptError as exc:
                    pending.popleft()
                    yield i, fallback(i, Attempt(host, proxy, exc.failure))
                    continue
                if prepared is None or conn is None:
                    pending.popleft()
                    yield i, fallback(i, None)
                    continue
                lane = _Lane(
                    prepared[0], conn, host, proxy, _maker(transport, prepared[0], host, proxy, url_for)
                )
                conn.chunk = max(conn.chunk, RECV_BYTES)
                lanes.append(lane)
                try:
                    fill(lane)
                except StaleConnectionError:
                    conn.close()
                    requeue(lane)
                except AttemptError as exc:
                    conn.close()
                    first = lane.inflight.popleft()
                    requeue(lane)
                    yield first, fallback(first, Attempt(host, proxy, exc.failure))
                else:
                    if not lane.inflight:  # nothing could be sent on it: no progress that way
                        lanes.remove(lane)
                        lane.pool.release(conn)
                        if pending and pending[0] == i:
                            pending.popleft()
                            yield i, fallback(i, None)
            for lane in list(lanes):
                if not lane.inflight:
                    lanes.remove(lane)
                    lane.pool.release(lane.conn)
                    continue
                # The responses already buffered whole and plainly successful: no parse objects,
                # no system call (most of them when objects are small); then one the full way.
                conn, inflight = lane.conn, lane.inflight
                while inflight:
                    body = conn.buffered_ok_body(max_size)
                    if body is None:
                        if conn.read_ready():  # more of it has arrived: no need to wait
                            continue
                        break
                    i = inflight.popleft()
                    lane.served += 1
                    try:
                        value = validate(i, body)
                    except IntegrityError as exc:
                        bad = Failure(Outcome.BAD_DATA, f"bad data: {exc}")
                        yield i, fallback(i, Attempt(lane.host, lane.proxy, bad))
                        continue
                    if not lane.ok:
                        lane.ok = True
                        mark_ok(lane.host, lane.proxy)
                    yield i, value
                if inflight:
                    yield from _serve_one(
                        transport, lane, paths, validate, fallback, mark_ok, max_size, requeue, state
                    )
                if lane in lanes and not lane.conn.closed and len(lane.inflight) <= state["window"] // 2:
                    try:
                        fill(lane)
                    except (StaleConnectionError, AttemptError):
                        lane.conn.close()
                        requeue(lane)
    finally:
        for lane in lanes:
            lane.conn.close()


def _maker(
    transport: Transport, pool: Pool, host: str, proxy: str, url_for: Callable[[str, str], str]
) -> Callable[[str], bytes] | None:
    """The request maker of a new lane (see :meth:`Transport.preparer`), if ``url_for`` puts a
    plain path after a ``/`` below one base URL, as the fetcher's does; else None."""
    probe = url_for(host, "x")
    if not probe.endswith("/x"):
        return None
    try:
        quick = transport.preparer(probe[:-2], proxy)
    except AttemptError:
        return None
    return quick[1] if quick is not None and quick[0] is pool else None


def _serve_one(
    transport: Transport,
    lane: _Lane,
    paths: Sequence[str],
    validate: Callable[[int, bytes], T],
    fallback: Callable[[int, Attempt | None], T],
    mark_ok: Callable[[str, str], object],
    max_size: int | None,
    requeue: Callable[[_Lane], None],
    state: dict[str, int],
) -> Iterator[tuple[int, T]]:
    """Read the next response of ``lane`` and yield its result (or its fallback's)."""
    conn = lane.conn
    i = lane.inflight[0]
    try:
        head = conn.read_head(lane.pool.stall)
    except StaleConnectionError as exc:
        conn.close()
        if not lane.fresh or lane.served:
            _shrink(lane, state)
            requeue(lane)  # the server ended a kept-alive connection: not a failure
            return
        lane.inflight.popleft()
        requeue(lane)
        yield i, fallback(i, Attempt(lane.host, lane.proxy, exc.failure))
        return
    except AttemptError as exc:
        conn.close()
        lane.inflight.popleft()
        requeue(lane)
        yield i, fallback(i, Attempt(lane.host, lane.proxy, exc.failure))
        return
    parts: list[bytes] = []
    try:
        transport.response(lane.pool, conn, head, parts.append, max_size)
    except AttemptError as exc:
        lane.inflight.popleft()
        if conn.closed:
            requeue(lane)
        yield i, fallback(i, Attempt(lane.host, lane.proxy, exc.failure))
        return
    lane.inflight.popleft()
    lane.served += 1
    if not head.keep_alive:
        conn.close()
        _shrink(lane, state)
        requeue(lane)
    try:
        value = validate(i, b"".join(parts))  # one part: no copy
    except IntegrityError as exc:
        yield i, fallback(i, Attempt(lane.host, lane.proxy, Failure(Outcome.BAD_DATA, f"bad data: {exc}")))
        return
    if not lane.ok:
        lane.ok = True
        mark_ok(lane.host, lane.proxy)
    yield i, value


def _shrink(lane: _Lane, state: dict[str, int]) -> None:
    """A fresh connection the server ended after ``served`` responses: send no more than that."""
    if lane.fresh and lane.served:
        state["window"] = max(1, min(state["window"], lane.served))
