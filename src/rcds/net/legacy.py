"""The urllib3 transport: one GET attempt over urllib3 keep-alive pools.

:class:`~rcds.net.transport.Transport` uses it for ``https://`` URLs and proxies; plain
``http://`` goes through the lean :mod:`rcds.net.http1` code. Same contract as
:meth:`Transport.get <rcds.net.transport.Transport.get>`: a single attempt, status and
``Content-Length`` checks, stall timeout and low-speed limit, failures raised as
:class:`~rcds.net.failures.AttemptError`. Pools (a :class:`urllib3.PoolManager` for
``DIRECT``, a :class:`urllib3.ProxyManager` per proxy) are created on first use and shared
by threads.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

import urllib3

from rcds.net.failures import AttemptError, Failure, Outcome, classify_exception, classify_status
from rcds.net.proxies import DIRECT
from rcds.net.settings import NetSettings

CHUNK_SIZE = 1 << 16
_DRAIN_LIMIT = 1 << 16
_NUM_POOLS = 32

Clock = Callable[[], float]


class Urllib3Transport:
    """Performs single download attempts over shared urllib3 keep-alive connection pools."""

    def __init__(self, settings: NetSettings, *, monotonic: Clock = time.monotonic) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._managers: dict[str, urllib3.PoolManager] = {}

    def manager(self, proxy: str) -> urllib3.PoolManager:
        """The pool manager for ``proxy`` (``DIRECT`` for none), created on first use."""
        with self._lock:
            mgr = self._managers.get(proxy)
            if mgr is None:
                kw = {"num_pools": _NUM_POOLS, "maxsize": self.settings.pool_maxsize, "block": False}
                if proxy == DIRECT:
                    mgr = urllib3.PoolManager(retries=False, **kw)  # type: ignore[arg-type]
                else:
                    mgr = urllib3.ProxyManager(proxy, retries=False, **kw)  # type: ignore[arg-type]
                self._managers[proxy] = mgr
            return mgr

    def headers(self, *, nocache: bool) -> dict[str, str]:
        """The request headers; ``nocache`` adds the headers of a retry after corrupt data."""
        h = {"Connection": "keep-alive", "User-Agent": self.settings.user_agent}
        if nocache:
            h["Pragma"] = "no-cache"
            h["Cache-Control"] = "no-cache"
        return h

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
        proxied = proxy != DIRECT
        t = self.settings.timeouts_for(proxied)
        try:
            resp = self.manager(proxy).urlopen(
                "GET",
                url,
                headers=self.headers(nocache=nocache),
                preload_content=False,
                decode_content=False,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=t.connect, read=t.stall),
            )
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            raise AttemptError(classify_exception(exc, proxied=proxied)) from exc

        failure = classify_status(resp.status, resp.headers, proxied=proxied)
        length: int | None = None
        if failure is None:
            failure, length = _content_length(resp.headers.get("Content-Length"), proxied)
        if failure is None and max_size is not None and length is not None and length > max_size:
            failure = Failure(Outcome.BAD_DATA, f"Content-Length {length} exceeds the limit of {max_size}")
        if failure is not None:
            _discard(resp, failure.status is not None)
            raise AttemptError(failure)
        try:
            received = self._read_body(resp, write, proxied, length, max_size)
        except BaseException:
            _discard(resp, False)
            raise
        resp.release_conn()
        return received

    def _read_body(
        self,
        resp: urllib3.BaseHTTPResponse,
        write: Callable[[bytes], object],
        proxied: bool,
        length: int | None,
        max_size: int | None,
    ) -> int:
        t = self.settings.timeouts_for(proxied)
        limit = self.settings.low_speed_limit
        blame = Outcome.PROXY if proxied else Outcome.HOST
        received = 0
        window_start = self._monotonic()
        window_bytes = 0
        expected = f" of {length}" if length is not None else ""
        while True:
            try:
                chunk = resp.read1(CHUNK_SIZE, decode_content=False)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise AttemptError(
                    Failure(
                        blame,
                        f"transfer stalled: no data for {t.stall:g} s after {received}{expected} bytes",
                        True,
                    )
                ) from exc
            except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
                f = classify_exception(exc, proxied=proxied)
                raise AttemptError(
                    Failure(blame, f"short transfer: {received}{expected} bytes, then {f.reason}", True)
                ) from exc
            if not chunk:
                break
            received += len(chunk)
            if max_size is not None and received > max_size:
                raise AttemptError(Failure(Outcome.BAD_DATA, f"body exceeds the limit of {max_size} bytes"))
            write(chunk)
            if limit:
                window_bytes += len(chunk)
                now = self._monotonic()
                elapsed = now - window_start
                if elapsed >= t.stall:
                    if window_bytes < limit * elapsed:
                        rate = window_bytes / elapsed
                        raise AttemptError(
                            Failure(blame, f"too slow: {rate:.0f} B/s, below the limit of {limit} B/s", True)
                        )
                    window_start, window_bytes = now, 0
        if length is not None and received != length:
            raise AttemptError(
                Failure(blame, f"short transfer: {received} of {length} bytes (Content-Length)", True)
            )
        return received

    def close(self) -> None:
        """Close every pooled connection; pools are recreated if used again."""
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for mgr in managers:
            mgr.clear()


def _content_length(value: str | None, proxied: bool) -> tuple[Failure | None, int | None]:
    if value is None:
        return None, None
    try:
        length = int(value.split(",")[0].strip())
        if length < 0:
            raise ValueError(value)
    except ValueError:
        blame = Outcome.PROXY if proxied else Outcome.HOST
        return Failure(blame, f"invalid Content-Length {value!r}"), None
    return None, length


def _discard(resp: urllib3.BaseHTTPResponse, drain: bool) -> None:
    """Give the connection back: drain a small error body to keep it alive, else drop it."""
    length = resp.headers.get("Content-Length")
    if drain and length is not None and length.isdigit() and int(length) <= _DRAIN_LIMIT:
        resp.drain_conn()
        resp.release_conn()
        return
    resp.close()
    resp.release_conn()
