"""The wall clock of everything rcds stamps or checks by date, injectable for tests and simulations.

A clock is a callable giving seconds since the epoch, like :func:`time.time`. The service takes
one and passes it down to every part that writes a time into a repository (manifest, catalogs,
stamps, whitelist) or judges one (cleanup, whitelist age, replica checks, token and certificate
expiry), so a test can run it through simulated months. Durations and timeouts use
:func:`time.monotonic` instead and stay real; so do the HTTP ``Date``/``Expires`` headers, which
speak to real HTTP caches.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds since the epoch (UTC), like :func:`time.time`."""

system_clock: Clock = time.time
"""The real wall clock."""


def utc(seconds: float) -> dt.datetime:
    """An aware UTC datetime for ``seconds`` since the epoch, whole seconds."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


def utc_now(clock: Clock) -> dt.datetime:
    """The clock's time as an aware UTC datetime."""
    return utc(clock())
