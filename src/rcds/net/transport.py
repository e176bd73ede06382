"""One HTTP GET through one proxy (or directly), streamed, over kept-alive connections.

The transport knows nothing of fail-over: it performs a single attempt, checks the status
and the ``Content-Length``, enforces the stall timeout, the low-speed limit and the size
limit, and raises :class:`~rcds.net.failures.AttemptError` with a classified failure when
anything goes wrong.

Plain ``http://`` (direct, or through an ``http://`` proxy with an absolute-form request
target, as CernVM-FS talks to Squid) goes over raw sockets (:mod:`rcds.net.http1`): the
request is prepared as bytes and sent in one ``sendall``, and only the status line and the
few headers that matter are parsed. A request on a kept-alive connection that the server
had already closed is retried once on a fresh connection, without counting as a failure.
``https://`` goes through urllib3 (:class:`~rcds.net.legacy.Urllib3Transport`). Pools are
created on first use, one per proxy (or origin when ``DIRECT``), and shared by threads.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcds.net.body import BodyLimits
from rcds.net.failures import AttemptError, Failure, Outcome, classify_status
from rcds.net.http1 import Connection, Head, Pool, StaleConnectionError, request_bytes, split_url
from rcds.net.proxies import DIRECT
from rcds.net.settings import NetSettings

if TYPE_CHECKING:
    from rcds.net.legacy import Urllib3Transport

Clock = Callable[[], float]

_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class Transport:
    """Performs single download attempts over shared keep-alive connection pools."""

    def __init__(self, settings: NetSettings, *, monotonic: Clock = time.monotonic) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}
        self._legacy: Urllib3Transport | None = None
        ua = f"User-Agent: {settings.user_agent}\r\nConnection: keep-alive\r\n"
        self._fixed = (ua, ua + "Pragma: no-cache\r\nCache-Control: no-cache\r\n")

    def prepare(self, url: str, proxy: str, *, nocache: bool = False) -> tuple[Pool, bytes] | None:
        """The pool and the request bytes for ``url`` via ``proxy``; ``None`` unless plain HTTP.

        ``None`` means: use :meth:`legacy` (``https://``, or URLs the lean code does not parse).
        """
        if not url.startswith("http://") or not (proxy == DIRECT or proxy.startswith("http://")):
            return None
        if not url.isascii() or _UNSAFE.search(url) or (proxy != DIRECT and _UNSAFE.search(proxy)):
            return None  # never put spaces or control characters on the wire; urllib3 refuses them
        proxied = proxy != DIRECT
        try:
            authority, host, port, path = split_url(url)
            if proxied:
                _, phost, pport, _ = split_url(proxy)
        except ValueError:
            return None  # user info, odd ports: urllib3 handles (or reports) those
        fixed = self._fixed[nocache]
        if proxied:
            return self._pool(proxy, phost, pport, True), request_bytes(url, authority, fixed)
        return self._pool("DIRECT " + authority, host, port, False), request_bytes(path, authority, fixed)

    def preparer(self, base: str, proxy: str) -> tuple[Pool, Callable[[str], bytes]] | None:
        """For many requests below the base URL ``base`` via ``proxy``: the pool, and a function
        that gives the request bytes of a plain relative path (``[A-Za-z0-9/._~-]``, as object
        names are) with one concatenation: what :meth:`prepare` gives for ``base + "/" + path``.

        ``None`` where :meth:`prepare` gives ``None``. Other paths must go through :meth:`prepare`.
        """
        prepared = self.prepare(f"{base}/x", proxy)
        if prepared is None:
            return None
        pool, request = prepared
        end = request.index(b" HTTP/1.1\r\n")
        if request[end - 2 : end] != b"/x":  # pragma: no cover - prepare keeps the target as given
            return None
        head, tail = request[: end - 1], request[end:]

        def make(path: str) -> bytes:
            return head + path.encode("ascii") + tail

        return pool, make

    def _pool(self, key: str, host: str, port: int, proxied: bool) -> Pool:
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        t = self.settings.timeouts_for(proxied)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = Pool(
                    host,
                    port,
                    proxied=proxied,
                    connect=t.connect,
                    stall=t.stall,
                    maxsize=self.settings.pool_maxsize,
                )
                self._pools[key] = pool
            return pool

    def legacy(self) -> Urllib3Transport:
        """The urllib3 transport (``https://``), created on first use."""
        with self._lock:
            if self._legacy is None:
                from rcds.net.legacy import Urllib3Transport  # urllib3 only when https is used

                self._legacy = Urllib3Transport(self.settings, monotonic=self._monotonic)
            return self._legacy

    def get(
        self,
        url: str,
        proxy: str,
        write: Callable[[bytes], object],
        *,
        nocache: bool = False,
        max_size: int | None = None,
    ) -> int:
        """GET ``url`` through ``proxy`` and pass the body to ``write`` chunk by chunk.

        Returns the number of body bytes. Raises :class:`AttemptError` on any network or
        HTTP failure; exceptions raised by ``write`` propagate unchanged (the connection is
        then dropped).
        """
        prepared = self.prepare(url, proxy, nocache=nocache)
        if prepared is None:
            return self.legacy().get(url, proxy, write, nocache=nocache, max_size=max_size)
        pool, request = prepared
        conn, head = self.exchange(pool, request)
        return self.finish(pool, conn, head, write, max_size)

    def exchange(self, pool: Pool, request: bytes) -> tuple[Connection, Head]:
        """Send ``request`` on a pooled connection and read the response head.

        A kept-alive connection found closed by the server is replaced once by a new one.
        """
        retried = False
        while True:
            conn = pool.acquire()
            try:
                conn.send(request)
                return conn, conn.read_head(pool.stall)
            except StaleConnectionError as exc:
                conn.close()
                if conn.reused and not retried:
                    retried = True
                    continue
                raise AttemptError(exc.failure) from exc
            except BaseException:
                conn.close()
                raise

    def finish(
        self, pool: Pool, conn: Connection, head: Head, write: Callable[[bytes], object], max_size: int | None
    ) -> int:
        """:meth:`response`, then give ``conn`` back to ``pool`` (or close it)."""
        try:
            received = self.response(pool, conn, head, write, max_size)
        except AttemptError:
            if not conn.closed:  # an error body was drained: the connection goes on
                pool.release(conn)
            raise
        if head.keep_alive:
            pool.release(conn)
        else:
            conn.close()
        return received

    def response(
        self, pool: Pool, conn: Connection, head: Head, write: Callable[[bytes], object], max_size: int | None
    ) -> int:
        """Check the response ``head`` and stream its body to ``write``; returns its size.

        Raises :class:`AttemptError` for a failed status, a bad ``Content-Length``, a body
        over ``max_size`` and every transfer problem. ``conn`` is closed unless it can serve
        the next response (after an error status only when the error body was drained).
        """
        failure = classify_status(head.status, head.headers, proxied=conn.proxied)
        if failure is None and head.bad_length is not None:
            failure = Failure(conn.blame, head.bad_length)
        if failure is None and max_size is not None and head.length is not None and head.length > max_size:
            failure = Failure(
                Outcome.BAD_DATA, f"Content-Length {head.length} exceeds the limit of {max_size}"
            )
        if failure is not None:
            if failure.status is None or not conn.discard_body(head, pool.stall):
                conn.close()
            raise AttemptError(failure)
        limits = BodyLimits(pool.stall, self.settings.low_speed_limit, max_size, self._monotonic)
        try:
            received = conn.read_body(head, write, limits)
        except BaseException:
            conn.close()
            raise
        conn.served += 1
        return received

    def close(self) -> None:
        """Close every pooled connection; pools are recreated if used again."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            legacy, self._legacy = self._legacy, None
        for pool in pools:
            pool.close()
        if legacy is not None:
            legacy.close()
