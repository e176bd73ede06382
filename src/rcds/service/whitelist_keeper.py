"""Keeps the whitelists of the service's own repositories valid, and says so loudly when it cannot.

Every check (each minute, and at start) looks at each own repository's whitelist: when less than
a third of its validity is left (10 of 30 days) it is re-signed, atomically, with the master key
next to the repository (``<state_dir>/<fqrn>/keys/<fqrn>.masterkey``). When that key is missing or
unusable (kept off the server on purpose, or lost), the whitelist cannot be renewed here: every
check then logs an error (at most once an hour per repository), and the service's status and
metrics show the repository as failing, from the day renewal was due until an operator installs
a whitelist signed elsewhere (``rcds repo install-whitelist``) — 10 days ahead of expiry.

Replicas of the partner's repositories are only reported: their whitelist is the partner's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rcds.clock import Clock, utc_now
from rcds.errors import LockedError, RcdsError
from rcds.repo.whitelist_age import WhitelistAge, WhitelistState, assess_tree
from rcds.service.slots import RepoSlot

log = logging.getLogger("rcds.service.whitelist")
LOG_EVERY = 3600.0
"""Seconds (of the service clock) between two error lines about the same repository."""


@dataclass
class KeeperRecord:
    """What the keeper knows of one own repository."""

    age: WhitelistAge | None = None
    resigns: int = 0
    failures: int = 0
    """Checks at which the whitelist needed re-signing and could not be re-signed."""
    last_error: str | None = None
    last_logged: float | None = None


class WhitelistKeeper:
    """Re-signs own whitelists when due; reports own and replicated whitelists."""

    def __init__(
        self,
        slots: Sequence[RepoSlot],
        clock: Clock,
        replica_publics: Callable[[], Mapping[str, Path]] = dict,
    ) -> None:
        self.slots = list(slots)
        self.clock = clock
        self.replica_publics = replica_publics
        self.records: dict[str, KeeperRecord] = {s.name: KeeperRecord() for s in self.slots}
        self._lock = threading.Lock()

    def warn_missing_keys(self) -> list[str]:
        """Log (once, at start) which repositories have no usable master key here; return them."""
        missing = []
        for slot in self.slots:
            key = slot.s0.layout.key("masterkey")
            try:
                key.read_bytes()
            except OSError as exc:
                missing.append(slot.name)
                log.warning(
                    "no master key for %s (%s: %s): this server cannot re-sign its whitelist; re-sign "
                    "it elsewhere (rcds repo resign --whitelist-only) and install it "
                    "(rcds repo install-whitelist) before it expires",
                    slot.name,
                    key,
                    exc.strerror or exc,
                )
        return missing

    def check(self) -> list[WhitelistAge]:
        """Look at every own whitelist and re-sign those that are due; return their states after."""
        with self._lock:
            return [self._check(slot) for slot in self.slots]

    def _check(self, slot: RepoSlot) -> WhitelistAge:
        rec = self.records[slot.name]
        now = self.clock()
        age = assess_tree(slot.name, slot.public, utc_now(self.clock))
        rec.age = age
        if not age.needs_resign:
            rec.last_error = None
            return age
        try:
            with slot.lock:
                slot.s0.resign(now)
        except LockedError as exc:  # an admin's command is changing the repository: next check
            log.info("whitelist of %s not re-signed yet: %s", slot.name, exc)
            return age
        except (RcdsError, OSError) as exc:
            rec.failures += 1
            rec.last_error = str(exc)
            if rec.last_logged is None or now - rec.last_logged >= LOG_EVERY or now < rec.last_logged:
                rec.last_logged = now
                log.error("CANNOT RE-SIGN the whitelist: %s; %s", age.message(), exc)
            return age
        rec.resigns += 1
        rec.last_error = None
        rec.last_logged = None
        rec.age = assess_tree(slot.name, slot.public, utc_now(self.clock))
        log.info("re-signed the whitelist of %s (%s)", slot.name, age.message())
        return rec.age

    def status(self) -> dict[str, object]:
        """Own and replicated whitelists for the status output: ``problems`` lists what needs a person."""
        now = utc_now(self.clock)
        own = []
        problems = []
        with self._lock:
            for slot in self.slots:
                rec = self.records[slot.name]
                age = assess_tree(slot.name, slot.public, now)
                entry = age.as_json()
                entry.update(resigns=rec.resigns, resign_failures=rec.failures, last_error=rec.last_error)
                own.append(entry)
                if age.state in (WhitelistState.EXPIRED, WhitelistState.UNREADABLE) or (
                    age.needs_resign and rec.last_error is not None
                ):
                    problems.append(f"{age.message()}: {rec.last_error or 'not re-signed'}")
        replicas = []
        for name, public in sorted(self.replica_publics().items()):
            age = assess_tree(name, public, now)
            replicas.append(age.as_json())
            if age.overdue:
                problems.append(f"replica: {age.message()} (the partner must re-sign it)")
        return {"whitelists": own, "replica_whitelists": replicas, "problems": problems}
