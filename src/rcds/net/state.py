"""Global fail-over state: the current host and proxy, shared by every request of a fetcher.

Fail-overs are sticky: later requests start from the host and proxy that worked last. The
first host (by configured or probed order) and the first proxy group come back after
``host_reset_after`` / ``proxy_reset_after`` seconds. A switch is only made when the failed
host or proxy is still the current one; when another thread switched already, the request
just adopts the new current one (as the stock client does). All methods are thread safe.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

from rcds.net.proxies import ProxyConfig
from rcds.record import SlotRecord

Clock = Callable[[], float]


class _Record(SlotRecord):
    """What is known of one host or proxy (mutable; compared field by field)."""

    __match_args__ = ("latency", "last_error", "failed_until")
    __slots__ = __match_args__

    def __init__(
        self, latency: float | None = None, last_error: str | None = None, failed_until: float | None = None
    ) -> None:
        self.latency = latency
        self.last_error = last_error
        self.failed_until = failed_until


class EndpointStatus(NamedTuple):
    """What a fetcher knows about one host or proxy (for ``rcds info``).

    ``failed_until`` is in the fetcher's clock units; ``retry_in`` is the number of seconds
    until then. ``latency`` is the last probed round-trip time in seconds.
    """

    role: Literal["host", "proxy"]
    url: str
    state: Literal["ok", "failed"]
    current: bool
    last_error: str | None
    latency: float | None
    failed_until: float | None
    retry_in: float | None
    group: int | None = None
    fallback: bool = False


class FailoverState:
    """The host chain and the proxy groups, with sticky fail-over and timed resets."""

    def __init__(
        self,
        hosts: Sequence[str],
        proxies: ProxyConfig,
        *,
        host_reset_after: float,
        proxy_reset_after: float,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        if not hosts:
            raise ValueError("a fetcher needs at least one server")
        self._lock = threading.Lock()
        self._clock = clock
        self._rng = rng
        self.hosts = tuple(hosts)
        self.proxies = proxies
        self._host_reset_after = host_reset_after
        self._proxy_reset_after = proxy_reset_after
        self._order = list(range(len(self.hosts)))
        self._host_pos = 0
        self._host_switched_at: float | None = None
        self._host_records = {h: _Record() for h in self.hosts}
        self._groups = proxies.all_groups
        self._group = 0
        self._burned: set[str] = set()
        self._proxy = ""
        self._proxy_switched_at: float | None = None
        self._proxy_records = {p: _Record() for g in self._groups for p in g}
        self.probed = False
        self.failovers: dict[tuple[str, str], int] = {}
        """Failovers so far, by (the host that failed or was in use, the proxy that failed or was in use)."""
        self._rebalance()

    @property
    def proxy_count(self) -> int:
        """Number of proxies, ``DIRECT`` included, over all groups."""
        return len(self._proxy_records)

    def route(self) -> tuple[str, str]:
        """Apply due resets and return the current (host, proxy)."""
        with self._lock:
            now = self._clock()
            if (
                self._host_pos
                and self._host_reset_after > 0
                and self._host_switched_at is not None
                and now >= self._host_switched_at + self._host_reset_after
            ):
                self._host_pos = 0
                self._host_switched_at = None
            if (
                self._proxy_reset_after > 0
                and self._proxy_switched_at is not None
                and now >= self._proxy_switched_at + self._proxy_reset_after
            ):
                self._reset_proxies()
            return self.hosts[self._order[self._host_pos]], self._proxy

    def current_proxy(self) -> str:
        """The current proxy (``DIRECT`` for none)."""
        with self._lock:
            return self._proxy

    def switch_proxy(self, failed: str, reason: str) -> str:
        """Record that ``failed`` failed; fail over from it if it is still current.

        The next proxy is a random unburned one of the current group, else of the next group.
        """
        with self._lock:
            self._mark(self._proxy_records[failed], reason, self._proxy_reset_after)
            if failed != self._proxy:
                return self._proxy
            key = (self.hosts[self._order[self._host_pos]], failed or "DIRECT")
            self.failovers[key] = self.failovers.get(key, 0) + 1
            self._burned.add(failed)
            if self._burned >= set(self._groups[self._group]):
                self._group = (self._group + 1) % len(self._groups)
                self._burned.clear()
            if self._proxy_switched_at is None:
                self._proxy_switched_at = self._clock()
            self._rebalance()
            return self._proxy

    def reset_proxies(self) -> str:
        """Return to the first proxy group (done before a host fail-over)."""
        with self._lock:
            if self._group or self._burned:
                self._reset_proxies()
            return self._proxy

    def switch_host(self, failed: str, reason: str) -> str:
        """Record that ``failed`` failed; fail over to the next host if it is still current."""
        with self._lock:
            self._mark(self._host_records[failed], reason, self._host_reset_after)
            if failed == self.hosts[self._order[self._host_pos]]:
                key = (failed, self._proxy or "DIRECT")
                self.failovers[key] = self.failovers.get(key, 0) + 1
                self._host_pos = (self._host_pos + 1) % len(self.hosts)
                if self._host_switched_at is None:
                    self._host_switched_at = self._clock()
            return self.hosts[self._order[self._host_pos]]

    def mark_host_failed(self, host: str, reason: str) -> None:
        """Record a host failure without failing over (e.g. on the last host tried)."""
        with self._lock:
            self._mark(self._host_records[host], reason, self._host_reset_after)

    def mark_proxy_failed(self, proxy: str, reason: str) -> None:
        """Record a proxy failure without failing over."""
        with self._lock:
            self._mark(self._proxy_records[proxy], reason, self._proxy_reset_after)

    def mark_ok(self, host: str, proxy: str) -> None:
        """Record a success through ``host`` and ``proxy``."""
        with self._lock:
            self._host_records[host].failed_until = None
            self._proxy_records[proxy].failed_until = None

    def set_latencies(
        self, latencies: Mapping[str, float | None], errors: Mapping[str, str], *, full: bool = True
    ) -> None:
        """Store probed round-trip times (``None`` = down) and order hosts by them.

        Hosts not in ``latencies`` keep their previous value; down hosts go last. After a
        ``full`` probe, or when the order changed, the chain restarts at the fastest host.
        """
        with self._lock:
            now = self._clock()
            for host, latency in latencies.items():
                rec = self._host_records[host]
                rec.latency = latency
                if latency is None:
                    self._mark(rec, errors.get(host, "probe failed"), self._host_reset_after, now)
                else:
                    rec.failed_until = None
            index = {h: i for i, h in enumerate(self.hosts)}

            def key(h: str) -> tuple[bool, float, int]:
                lat = self._host_records[h].latency
                return (lat is None, lat if lat is not None else 0.0, index[h])

            order = [index[h] for h in sorted(self.hosts, key=key)]
            if full or order != self._order:
                self._order = order
                self._host_pos = 0
                self._host_switched_at = None
            self.probed = True

    def hosts_to_reprobe(self) -> list[str]:
        """After a probe: the hosts that were down and whose failure delay is over."""
        with self._lock:
            if not self.probed or self._host_reset_after <= 0:
                return []
            now = self._clock()
            return [
                h
                for h, r in self._host_records.items()
                if r.latency is None and (r.failed_until is None or now >= r.failed_until)
            ]

    def host_order(self) -> list[str]:
        """The hosts in fail-over order (configured, or by probed latency)."""
        with self._lock:
            return [self.hosts[i] for i in self._order]

    def status(self) -> list[EndpointStatus]:
        """Records of every host (in fail-over order), then every proxy (in group order)."""
        with self._lock:
            now = self._clock()
            current_host = self.hosts[self._order[self._host_pos]]
            out = [
                _status("host", h, self._host_records[h], now, h == current_host)
                for h in (self.hosts[i] for i in self._order)
            ]
            n_regular = len(self.proxies.groups)
            for gi, group in enumerate(self._groups):
                for p in group:
                    rec = self._proxy_records[p]
                    out.append(_status("proxy", p, rec, now, p == self._proxy, gi, gi >= n_regular))
            return out

    # -- internals (lock held) --

    def _mark(self, rec: _Record, reason: str, delay: float, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        rec.last_error = reason
        rec.failed_until = now + delay

    def _reset_proxies(self) -> None:
        self._group = 0
        self._burned.clear()
        self._proxy_switched_at = None
        self._rebalance()

    def _rebalance(self) -> None:
        candidates = [p for p in self._groups[self._group] if p not in self._burned]
        self._proxy = self._rng.choice(candidates)


def _status(
    role: Literal["host", "proxy"],
    url: str,
    rec: _Record,
    now: float,
    current: bool,
    group: int | None = None,
    fallback: bool = False,
) -> EndpointStatus:
    failed = rec.failed_until is not None and now < rec.failed_until
    return EndpointStatus(
        role=role,
        url=url,
        state="failed" if failed else "ok",
        current=current,
        last_error=rec.last_error,
        latency=rec.latency,
        failed_until=rec.failed_until if failed else None,
        retry_in=(rec.failed_until - now) if failed and rec.failed_until is not None else None,
        group=group,
        fallback=fallback,
    )
