"""The :class:`Fetcher`: download repository files with retries, proxy and host fail-over.

A fetcher gets paths relative to a repository base URL (``http://host/cvmfs/<fqrn>``) and
fails over like the stock client (``network/download.cc``):

1. transient errors (connection, timeout, short transfer, HTTP 429) are retried on the same
   host/proxy pair up to ``max_retries`` times, with randomized exponential back-off;
2. data rejected by the caller's validator is fetched once more from the same pair with
   ``Pragma: no-cache`` / ``Cache-Control: no-cache``, then counts as a host failure;
3. a proxy failure switches to another proxy of the group (random), then to the next group;
   once every proxy was used it becomes a host failure and the proxies are reset;
4. a host failure switches to the next host.

One request tries at most every host, and on each host at most every proxy. Fail-overs are
global and sticky; see :mod:`rcds.net.state`. When everything failed a
:class:`~rcds.net.failures.FetchError` (a :class:`~rcds.errors.NetworkError`) lists every try.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import BinaryIO, Protocol, TypeVar, overload
from urllib.parse import quote

from rcds.errors import IntegrityError
from rcds.net.failures import Attempt, AttemptError, Failure, FetchError, Outcome
from rcds.net.pipeline import CONNECTIONS, WINDOW, pipelined
from rcds.net.proxies import ProxyConfig, check_server_url, parse_server_urls
from rcds.net.settings import NetSettings
from rcds.net.state import EndpointStatus, FailoverState
from rcds.net.transport import Transport

log = logging.getLogger("rcds.net")

T = TypeVar("T")

PROBE_PATH = ".cvmfspublished"
_PROBE_MAX_SIZE = 1 << 20
_SAFE = "/-._~!$&'()*+,;=:@"
_PLAIN = re.compile(r"[A-Za-z0-9/._~-]*").fullmatch
"""Paths that :func:`quote` leaves as they are (a subset of them)."""


class StreamCheck(Protocol):
    """A streaming verifier, e.g. :class:`rcds.format.compression.StreamVerifier`.

    ``feed`` gets every received chunk (and returns the decoded bytes when the fetcher is
    asked to store them); ``finish`` raises :class:`~rcds.errors.IntegrityError` on bad data.
    """

    def feed(self, data: bytes, /) -> object:
        """Check the next chunk of raw bytes."""
        ...

    def finish(self) -> object:
        """Check the end of the stream."""
        ...


class Fetcher:
    """Fetches files below repository base URLs through proxies, with fail-over.

    ``servers`` are base URLs (``http(s)://host[:port]/cvmfs/<fqrn>``), tried in order;
    ``proxies`` defaults to ``DIRECT``. ``clock`` (monotonic seconds), ``sleep`` and ``rng``
    are injectable for tests. Instances are thread safe and keep connections alive; call
    :meth:`close` (or use ``with``) to drop them.
    """

    def __init__(
        self,
        servers: Sequence[str],
        proxies: ProxyConfig | None = None,
        settings: NetSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or NetSettings()
        self.proxies = proxies or ProxyConfig.direct()
        urls = [check_server_url(s) for s in servers]
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._state = FailoverState(
            tuple(dict.fromkeys(urls)),
            self.proxies,
            host_reset_after=self.settings.host_reset_after,
            proxy_reset_after=self.settings.proxy_reset_after,
            clock=clock,
            rng=self._rng,
        )
        self._transport = Transport(self.settings)
        self.pipeline_connections = CONNECTIONS
        """Connections one :meth:`fetch_many` call pipelines its requests over."""
        self.pipeline_window = WINDOW
        """Requests in flight per connection in :meth:`fetch_many` (1: no pipelining)."""
        self._probe_lock = threading.Lock()

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, str],
        fqrn: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> Fetcher:
        """Build a fetcher from ``CVMFS_SERVER_URL``, the proxy and the tuning parameters.

        Raises :class:`~rcds.errors.ConfigError` when a parameter is missing or malformed.
        """
        servers = parse_server_urls(params.get("CVMFS_SERVER_URL"), fqrn)
        return cls(
            servers,
            ProxyConfig.from_params(params),
            NetSettings.from_params(params),
            clock=clock,
            sleep=sleep,
            rng=rng,
        )

    @property
    def servers(self) -> tuple[str, ...]:
        """The configured server base URLs (in configured order)."""
        return self._state.hosts

    def preferred_servers(self) -> list[str]:
        """The server base URLs in the order this fetcher would try them now (current first).

        For a second fetcher (e.g. in a worker process) that should start where this one is.
        """
        current, _ = self._state.route()
        return [current, *(h for h in self._state.host_order() if h != current)]

    @staticmethod
    def url_for(host: str, path: str) -> str:
        """The URL of ``path`` (a plain, unquoted relative path) below the base URL ``host``."""
        path = path.lstrip("/")
        if _PLAIN(path) is None:  # object names (hex, ``/``, ``.``) need no quoting: the usual case
            path = quote(path, safe=_SAFE)
        return f"{host}/{path}"

    @overload
    def fetch(self, path: str, *, validate: None = None, max_size: int | None = None) -> bytes: ...

    @overload
    def fetch(self, path: str, *, validate: Callable[[bytes], T], max_size: int | None = None) -> T: ...

    def fetch(
        self, path: str, *, validate: Callable[[bytes], T] | None = None, max_size: int | None = None
    ) -> T | bytes:
        """Download ``path`` into memory and return it, or what ``validate`` makes of it.

        ``validate(body)`` raises :class:`~rcds.errors.IntegrityError` on bad data (then the
        download is retried without caches, then elsewhere). A body larger than ``max_size``
        counts as bad data. Raises :class:`~rcds.net.failures.FetchError` when all failed.
        """

        def attempt(url: str, proxy: str, nocache: bool) -> T | bytes:
            parts: list[bytes] = []
            self._transport.get(url, proxy, parts.append, nocache=nocache, max_size=max_size)
            body = b"".join(parts)  # one part (the usual case for small files): no copy
            return validate(body) if validate is not None else body

        return self._run(path, attempt)

    def fetch_many(
        self,
        paths: Sequence[str],
        validate: Callable[[int, bytes], T],
        *,
        max_size: int | None = None,
    ) -> Iterator[tuple[int, T]]:
        """Download many small files; yields ``(index into paths, validate(index, body))``.

        Results come in completion order. Every index is yielded exactly once, or
        :class:`~rcds.net.failures.FetchError` is raised (as :meth:`fetch` would) for a path
        that failed on every host and proxy. ``validate`` raising
        :class:`~rcds.errors.IntegrityError` means bad data (retried like :meth:`fetch`).
        Safe to call from several threads at once.
        """

        def fallback(index: int, prior: Attempt | None) -> T:
            def attempt(url: str, proxy: str, nocache: bool) -> T:
                parts: list[bytes] = []
                self._transport.get(url, proxy, parts.append, nocache=nocache, max_size=max_size)
                return validate(index, b"".join(parts))

            return self._run(paths[index], attempt, prior)

        if not paths:
            return
        self._reprobe_if_due()
        yield from pipelined(
            self._transport,
            paths,
            validate,
            route=self._state.route,
            url_for=self.url_for,
            fallback=fallback,
            mark_ok=self._state.mark_ok,
            max_size=max_size,
            connections=self.pipeline_connections,
            window=self.pipeline_window,
        )

    def fetch_to_file(
        self,
        path: str,
        fileobj: BinaryIO,
        *,
        verifier: Callable[[], StreamCheck] | None = None,
        store_output: bool = False,
        max_size: int | None = None,
    ) -> int:
        """Stream ``path`` into the seekable ``fileobj`` in constant memory.

        ``verifier`` makes a fresh :class:`StreamCheck` per attempt (e.g.
        ``lambda: StreamVerifier(hash)``); its ``feed``/``finish`` raising
        :class:`~rcds.errors.IntegrityError` means bad data. The raw bytes are written, or
        what ``feed`` returns when ``store_output`` is true. A failed attempt's partial output
        is truncated away. Returns the number of bytes written.
        """
        start = fileobj.tell()

        def attempt(url: str, proxy: str, nocache: bool) -> int:
            fileobj.seek(start)
            fileobj.truncate()
            check = verifier() if verifier is not None else None
            written = 0

            def write(chunk: bytes) -> None:
                nonlocal written
                out: object = chunk
                if check is not None:
                    out = check.feed(chunk)
                data = out if store_output else chunk
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError("store_output needs a verifier whose feed() returns bytes")
                written += fileobj.write(data)

            self._transport.get(url, proxy, write, nocache=nocache, max_size=max_size)
            if check is not None:
                check.finish()
            return written

        return self._run(path, attempt)

    def probe(self, path: str = PROBE_PATH, *, hosts: Sequence[str] | None = None) -> dict[str, float | None]:
        """Measure each host's round-trip time for ``path`` and order the hosts by it.

        Hosts that fail (any error or non-2xx answer) get ``None`` and go last; they are
        probed again, during a later request, once ``host_reset_after`` has passed. Probes go
        through the current proxy, once per host, without retries or fail-over.
        ``hosts`` restricts the probe to some hosts. Returns the latencies in seconds.
        """
        targets = list(self._state.hosts if hosts is None else hosts)
        proxy = self._state.current_proxy()

        def one(host: str) -> tuple[float | None, str]:
            t0 = time.perf_counter()
            try:
                self._transport.get(self.url_for(host, path), proxy, _ignore, max_size=_PROBE_MAX_SIZE)
            except AttemptError as exc:
                return None, exc.failure.reason
            return time.perf_counter() - t0, ""

        from concurrent.futures import ThreadPoolExecutor  # only probes need it: not at import

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(targets)))) as pool:
            results = dict(zip(targets, pool.map(one, targets), strict=True))
        latencies = {h: r[0] for h, r in results.items()}
        errors = {h: f"probe: {r[1]}" for h, r in results.items() if r[0] is None}
        self._state.set_latencies(latencies, errors, full=hosts is None)
        log.debug("probed hosts: %s", latencies)
        return latencies

    def host_order(self) -> list[str]:
        """The hosts in fail-over order (configured, or by probed latency)."""
        return self._state.host_order()

    def status(self) -> list[EndpointStatus]:
        """The state of every host and proxy: current, ok/failed, last error, latency."""
        return self._state.status()

    def failovers(self) -> dict[tuple[str, str], int]:
        """Failovers so far by (host, proxy) that failed (a copy; see :class:`FailoverState`)."""
        return dict(self._state.failovers)

    def close(self) -> None:
        """Close the kept-alive connections (the fetcher stays usable)."""
        self._transport.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the fail-over loop --

    def _run(self, path: str, attempt: Callable[[str, str, bool], T], prior: Attempt | None = None) -> T:
        """The fail-over loop for one path; ``prior`` is a first attempt that already failed."""
        if prior is None:
            self._reprobe_if_due()
            host, proxy = self._state.route()
        else:
            host, proxy = prior.host, prior.proxy
        n_hosts, n_proxies = len(self._state.hosts), self._state.proxy_count
        used_hosts = used_proxies = 1
        retries, backoff, nocache = 0, 0.0, False
        tried: list[Attempt] = []
        while True:
            if prior is not None:
                failure, prior = prior.failure, None
            else:
                try:
                    result = attempt(self.url_for(host, path), proxy, nocache)
                except AttemptError as exc:
                    failure = exc.failure
                except IntegrityError as exc:
                    failure = Failure(Outcome.BAD_DATA, f"bad data: {exc}")
                else:
                    self._state.mark_ok(host, proxy)
                    return result
            tried.append(Attempt(host, proxy, failure))
            log.debug("GET %s via %s failed: %s", self.url_for(host, path), proxy, failure.reason)

            if failure.outcome is Outcome.BAD_DATA:
                if not nocache:
                    nocache = True
                    continue
                failure = failure.as_host_failure(f"{failure.reason} (also with no-cache)")
            if failure.transient and retries < self.settings.max_retries:
                retries += 1
                backoff = self._next_backoff(backoff)
                self._sleep(backoff)
                continue
            retries, backoff = 0, 0.0

            if failure.outcome is Outcome.PROXY:
                if used_proxies < n_proxies:
                    proxy = self._state.switch_proxy(proxy, failure.reason)
                    used_proxies += 1
                    log.info("proxy failure (%s); switching to proxy %s", failure.reason, proxy)
                    continue
                self._state.mark_proxy_failed(proxy, failure.reason)
                failure = failure.as_host_failure(f"every proxy failed, last: {failure.reason}")
                proxy = self._state.reset_proxies()
                used_proxies = 1
            if used_hosts < n_hosts:
                host = self._state.switch_host(host, failure.reason)
                used_hosts += 1
                log.info("host failure (%s); switching to host %s", failure.reason, host)
                continue
            self._state.mark_host_failed(host, failure.reason)
            raise FetchError(path, tried)

    def _next_backoff(self, previous: float) -> float:
        s = self.settings
        value = self._rng.uniform(0.0, s.backoff_init) if previous <= 0 else previous * 2
        return min(value, s.backoff_max)

    def _reprobe_if_due(self) -> None:
        due = self._state.hosts_to_reprobe()
        if due and self._probe_lock.acquire(blocking=False):
            try:
                self.probe(hosts=due)
            finally:
                self._probe_lock.release()


def _ignore(_data: bytes) -> None:
    return None


__all__ = ["PROBE_PATH", "Fetcher", "StreamCheck"]
