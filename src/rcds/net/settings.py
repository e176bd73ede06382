"""Network tunables: timeouts, retries, back-off and fail-over reset delays.

Defaults are the stock client's (``/etc/cvmfs/default.conf`` and ``network/download.cc``);
:meth:`NetSettings.from_params` reads the same ``CVMFS_*`` parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Self

from rcds import __version__
from rcds.errors import ConfigError

USER_AGENT = f"rcds/{__version__}"
"""The ``User-Agent`` header rcds sends on every request."""


class _TimeoutsFields(NamedTuple):
    connect: float
    stall: float


class Timeouts(_TimeoutsFields):
    """Per-connection timeouts in seconds.

    ``connect`` bounds establishing a connection (and getting the response headers);
    ``stall`` aborts a transfer when no byte arrives for that long. ``stall`` is also the
    averaging window of the low-speed limit.
    """

    __slots__ = ()

    def __new__(cls, connect: float, stall: float) -> Timeouts:
        """Connect and stall timeouts in seconds; ConfigError unless both are positive and finite."""
        for name, value in (("connect", connect), ("stall", stall)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"the {name} timeout must be a positive number of seconds, not {value!r}")
        return tuple.__new__(cls, (connect, stall))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy: no classmethod
        return cls(*iterable)  # _replace builds through here: keep the checks


class _NetSettingsFields(NamedTuple):
    timeout: Timeouts
    timeout_direct: Timeouts
    low_speed_limit: int
    max_retries: int
    backoff_init: float
    backoff_max: float
    proxy_reset_after: float
    host_reset_after: float
    pool_maxsize: int
    user_agent: str


_TIMEOUT = Timeouts(5.0, 5.0)
_TIMEOUT_DIRECT = Timeouts(10.0, 10.0)


class NetSettings(_NetSettingsFields):
    """Everything that tunes how a :class:`~rcds.net.fetcher.Fetcher` talks to servers and proxies.

    * ``timeout`` / ``timeout_direct``: used through a proxy / without one
      (``CVMFS_TIMEOUT`` = 5 s, ``CVMFS_TIMEOUT_DIRECT`` = 10 s).
    * ``low_speed_limit``: bytes per second; a transfer slower than this over a whole
      ``stall`` window fails like a timeout (``CVMFS_LOW_SPEED_LIMIT``; 0 disables it).
    * ``max_retries``: retries on the same host/proxy pair after a transfer error.
    * ``backoff_init`` / ``backoff_max``: seconds; the first back-off is random in
      ``[0, backoff_init]``, then it doubles per retry up to ``backoff_max``.
    * ``proxy_reset_after`` / ``host_reset_after``: seconds after a fail-over at which the
      first proxy group / first host are tried again (0 = never).
    * ``pool_maxsize``: keep-alive connections kept per server or proxy.

    An immutable record (a :class:`~typing.NamedTuple`); building one checks the values.
    """

    __slots__ = ()

    def __new__(
        cls,
        timeout: Timeouts = _TIMEOUT,
        timeout_direct: Timeouts = _TIMEOUT_DIRECT,
        low_speed_limit: int = 1024,
        max_retries: int = 1,
        backoff_init: float = 2.0,
        backoff_max: float = 10.0,
        proxy_reset_after: float = 300.0,
        host_reset_after: float = 1800.0,
        pool_maxsize: int = 8,
        user_agent: str = USER_AGENT,
    ) -> NetSettings:
        """The settings (defaults: stock's, where it has one); ConfigError for a value out of its range."""
        self = tuple.__new__(
            cls,
            (
                timeout,
                timeout_direct,
                low_speed_limit,
                max_retries,
                backoff_init,
                backoff_max,
                proxy_reset_after,
                host_reset_after,
                pool_maxsize,
                user_agent,
            ),
        )
        self._check()
        return self

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy: no classmethod
        return cls(*iterable)  # _replace builds through here: keep the checks

    def _check(self) -> None:
        for name in ("low_speed_limit", "max_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        for name in ("backoff_init", "backoff_max", "proxy_reset_after", "host_reset_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, not {value!r}")
        if self.pool_maxsize < 1:
            raise ConfigError("pool_maxsize must be at least 1")

    def timeouts_for(self, proxied: bool) -> Timeouts:
        """The timeouts for a connection through a proxy (``proxied``) or directly."""
        return self.timeout if proxied else self.timeout_direct

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> NetSettings:
        """Build settings from ``CVMFS_*`` parameters; missing ones keep their defaults.

        Read: ``CVMFS_TIMEOUT``, ``CVMFS_TIMEOUT_DIRECT``, ``CVMFS_LOW_SPEED_LIMIT``,
        ``CVMFS_MAX_RETRIES``, ``CVMFS_BACKOFF_INIT``, ``CVMFS_BACKOFF_MAX``,
        ``CVMFS_PROXY_RESET_AFTER``, ``CVMFS_HOST_RESET_AFTER``.
        """
        d = cls()
        timeout = _number(params, "CVMFS_TIMEOUT", d.timeout.connect)
        direct = _number(params, "CVMFS_TIMEOUT_DIRECT", d.timeout_direct.connect)
        if timeout <= 0 or direct <= 0:
            raise ConfigError("CVMFS_TIMEOUT and CVMFS_TIMEOUT_DIRECT must be positive numbers of seconds")
        return cls(
            timeout=Timeouts(timeout, timeout),
            timeout_direct=Timeouts(direct, direct),
            low_speed_limit=int(_number(params, "CVMFS_LOW_SPEED_LIMIT", d.low_speed_limit)),
            max_retries=int(_number(params, "CVMFS_MAX_RETRIES", d.max_retries)),
            backoff_init=_number(params, "CVMFS_BACKOFF_INIT", d.backoff_init),
            backoff_max=_number(params, "CVMFS_BACKOFF_MAX", d.backoff_max),
            proxy_reset_after=_number(params, "CVMFS_PROXY_RESET_AFTER", d.proxy_reset_after),
            host_reset_after=_number(params, "CVMFS_HOST_RESET_AFTER", d.host_reset_after),
        )


def _number(params: Mapping[str, str], key: str, default: float) -> float:
    raw = params.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={raw!r} must be a non-negative number")
    return value
