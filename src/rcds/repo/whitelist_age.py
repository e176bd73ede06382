"""How long a repository's whitelist stays valid, and whether it is time to re-sign it.

One small check shared by the publishing service (which re-signs its own repositories), the
replicas (which only pass the upstream's whitelist on and can only report), ``rcds repo info``
and the client's ``rcds info``. A whitelist is due for re-signing when less than a third of its
validity is left (:data:`RENEW_FRACTION`), expired with stock's rule (see
:meth:`rcds.format.whitelist.Whitelist.is_expired`).
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from rcds.errors import IntegrityError, RcdsError
from rcds.format import whitelist as whitelist_fmt
from rcds.storage.base import Store

RENEW_FRACTION = 1 / 3
"""Re-sign when less than this part of the whitelist's validity is left (10 of 30 days)."""

WHITELIST = ".cvmfswhitelist"


class WhitelistState(Enum):
    """How a whitelist stands at a given time."""

    OK = "ok"
    RENEW = "renew"
    """Less than :data:`RENEW_FRACTION` of its validity left: re-sign now."""
    EXPIRED = "expired"
    UNREADABLE = "unreadable"
    """Missing or malformed: clients refuse the repository."""


class WhitelistAge(NamedTuple):
    """A whitelist's validity at ``now`` (a NamedTuple: the client imports this without dataclasses)."""

    repository: str
    now: dt.datetime
    state: WhitelistState
    created: dt.datetime | None = None
    expires: dt.datetime | None = None
    error: str | None = None

    @property
    def seconds_left(self) -> float:
        """Seconds until expiry (negative once expired; 0 when unreadable)."""
        if self.expires is None:
            return 0.0
        return (self.expires - self.now).total_seconds()

    @property
    def days_left(self) -> int:
        """Whole days until expiry (0 on the last day or later)."""
        return max(0, int((self.seconds_left + 60) // 86400))  # a minute's slack: 30 days, not 29

    @property
    def needs_resign(self) -> bool:
        """True unless the whitelist is readable and has more than a third of its validity left."""
        return self.state is not WhitelistState.OK

    @property
    def overdue(self) -> bool:
        """True when re-signing was due more than a day ago (an upstream that does not re-sign)."""
        if self.state is not WhitelistState.RENEW or self.created is None or self.expires is None:
            return self.state in (WhitelistState.EXPIRED, WhitelistState.UNREADABLE)
        validity = (self.expires - self.created).total_seconds()
        return self.seconds_left < validity * RENEW_FRACTION - 86400

    def message(self) -> str:
        """One line for logs and command output."""
        if self.state is WhitelistState.UNREADABLE:
            return f"the whitelist of {self.repository} is unreadable: {self.error}"
        assert self.expires is not None
        when = f"{self.expires:%Y-%m-%d %H:%M} UTC"
        if self.state is WhitelistState.EXPIRED:
            return f"the whitelist of {self.repository} expired at {when}; clients refuse the repository"
        return f"the whitelist of {self.repository} expires in {self.days_left} days ({when})"

    def as_json(self) -> dict[str, object]:
        """A JSON-ready mapping (times as ISO 8601 UTC)."""
        return {
            "repository": self.repository,
            "state": self.state.value,
            "created": self.created.isoformat() if self.created else None,
            "expires": self.expires.isoformat() if self.expires else None,
            "expires_ts": int(self.expires.timestamp()) if self.expires else None,
            "seconds_left": int(self.seconds_left),
            "days_left": self.days_left,
            "error": self.error,
        }


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def assess(repository: str, wl: whitelist_fmt.Whitelist, now: dt.datetime) -> WhitelistAge:
    """The state of a parsed whitelist at ``now``."""
    created, expires, now = _aware(wl.created), _aware(wl.expires), _aware(now)
    if wl.is_expired(now):
        state = WhitelistState.EXPIRED
    else:
        validity = max(1.0, (expires - created).total_seconds())
        left = (expires - now).total_seconds()
        state = WhitelistState.RENEW if left < validity * RENEW_FRACTION else WhitelistState.OK
    return WhitelistAge(repository, now, state, created, expires)


def assess_bytes(repository: str, data: bytes, now: dt.datetime) -> WhitelistAge:
    """The state of a signed whitelist's bytes at ``now`` (the signature is not checked here)."""
    try:
        wl = whitelist_fmt.parse(data).whitelist
    except IntegrityError as exc:
        return WhitelistAge(repository, _aware(now), WhitelistState.UNREADABLE, error=str(exc))
    return assess(repository, wl, now)


def assess_tree(repository: str, public: Path | Store, now: dt.datetime) -> WhitelistAge:
    """The state of the whitelist of a repository tree (own stratum 0 or replica, local or a store)."""
    try:
        data = public.get(WHITELIST) if isinstance(public, Store) else (Path(public) / WHITELIST).read_bytes()
    except (OSError, RcdsError) as exc:
        where = (
            f"{public.location}/{WHITELIST}" if isinstance(public, Store) else str(Path(public) / WHITELIST)
        )
        reason = f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}"
        return WhitelistAge(repository, _aware(now), WhitelistState.UNREADABLE, error=reason)
    return assess_bytes(repository, data, now)
