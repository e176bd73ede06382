"""Cleanup: CIDs unused for ``maxdays`` are removed, one repository per hour, each followed by gc.

A CID is used when it was published or updated within the window: its newest stamp in *any*
repository (own or replica) or, without a stamp, its own catalog's publish time. Never removed:
a CID stamped within the window anywhere, a CID queued or being published, a CID whose age cannot
be told. The clock is injectable, so tests run simulated days.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rcds.errors import RcdsError
from rcds.service.presence import Presence
from rcds.service.repo_reader import Tree, catalog_age, published
from rcds.service.slots import RepoSlot
from rcds.service.stamps import StampBook
from rcds.service.status import StatusBook

log = logging.getLogger("rcds.service.cleanup")
DAY = 86400


@dataclass
class CleanResult:
    """What one cleanup of one repository did."""

    repository: str
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    stamps_dropped: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    error: str | None = None
    """Why the cleanup stopped early, if it did."""


class Cleaner:
    """Decides what is expired and removes it; :meth:`tick` runs the hourly schedule."""

    def __init__(
        self,
        slots: Sequence[RepoSlot],
        presence: Presence,
        stamps: StampBook,
        status: StatusBook,
        *,
        prefix: str,
        maxdays: int,
        start_hour: int,
        clock: Callable[[], float],
        replica_publics: Callable[[], Mapping[str, Tree]] = dict,
        wake: Callable[[], None] = lambda: None,
        on_result: Callable[[CleanResult, float], None] = lambda _r, _t: None,
    ) -> None:
        self.slots = list(slots)
        self.presence = presence
        self.stamps = stamps
        self.status = status
        self.prefix = prefix
        self.maxdays = maxdays
        self.start_hour = start_hour
        self.clock = clock
        self.replica_publics = replica_publics
        self.wake = wake
        self.on_result = on_result
        self._done: dict[str, dt.date] = {}
        self._lock = threading.Lock()

    def slot_hour(self, index: int) -> int:
        """The local hour at which repository number ``index`` (0-based) is cleaned."""
        return (self.start_hour + index) % 24

    def next_runs(self, now: float) -> dict[str, float]:
        """Repository -> when its next cleanup starts (Unix time, local hours)."""
        local = dt.datetime.fromtimestamp(now)
        out = {}
        for i, slot in enumerate(self.slots):
            start = local.replace(hour=self.slot_hour(i), minute=0, second=0, microsecond=0)
            if start <= local and (self._done.get(slot.name) == local.date() or local.hour != start.hour):
                start += dt.timedelta(days=1)
            out[slot.name] = start.timestamp()
        return out

    def tick(self, now: float | None = None) -> list[CleanResult]:
        """Clean every repository whose hour has come and that was not cleaned today."""
        t = now if now is not None else self.clock()
        local = dt.datetime.fromtimestamp(t)
        results = []
        for i, slot in enumerate(self.slots):
            if local.hour == self.slot_hour(i) and self._done.get(slot.name) != local.date():
                self._done[slot.name] = local.date()
                results.append(self.clean(slot, t))
        return results

    def expired(self, now: float) -> dict[str, list[str]]:
        """Repository -> CIDs that are expired now (nothing is changed)."""
        stamps = self.stamps.all_stamps(self._all_publics())
        active = self.status.active()
        cutoff = now - self.maxdays * DAY
        out: dict[str, list[str]] = {}
        for slot in self.slots:
            rev = published(slot.public)
            if rev is None:
                continue
            victims = []
            for cid in sorted(self.presence.cids_of(slot.name)):
                if cid in active:
                    continue
                last: float | None = stamps.get(cid)
                if last is None:
                    last = catalog_age(slot.public, rev, f"/{self.prefix}/{cid}")
                if last is not None and last < cutoff:
                    victims.append(cid)
            out[slot.name] = victims
        return out

    def _all_publics(self) -> dict[str, Tree]:
        publics: dict[str, Tree] = {s.name: s.public for s in self.slots}
        publics.update(self.replica_publics())
        return publics

    def clean(self, slot: RepoSlot, now: float | None = None) -> CleanResult:
        """Clean one repository now: remove expired CIDs and orphan stamps, then collect garbage."""
        t = now if now is not None else self.clock()
        result = CleanResult(slot.name)
        with self._lock:
            self.stamps.flush()
            with slot.lock:
                slot.cleaning = True
            try:
                self.presence.refresh()
                victims = self.expired(t).get(slot.name, [])
                result.kept = len(self.presence.cids_of(slot.name)) - len(victims)
                with slot.lock:
                    # re-check under the lock: a publish or update may have happened meanwhile, and
                    # its stamp may be pending or written already (the stamp writer needs this lock)
                    active = self.status.active()
                    used = self.stamps.all_stamps(self._all_publics())
                    cutoff = t - self.maxdays * DAY
                    victims = [c for c in victims if c not in active and used.get(c, 0) < cutoff]
                    if victims:
                        slot.s0.remove_many(
                            [f"/{self.prefix}/{c}" for c in victims], missing_ok=True, now=int(t)
                        )
                    result.removed = victims
                self.presence.refresh(slot.name)
                result.stamps_dropped = self._drop_orphan_stamps(cutoff)
                with slot.lock:
                    gc = slot.s0.gc(keep_revisions=2)
                result.objects_deleted, result.bytes_freed = gc.deleted, gc.bytes_freed
                log.info(
                    "cleanup of %s: removed %d CIDs, kept %d, freed %d bytes",
                    slot.name,
                    len(victims),
                    result.kept,
                    gc.bytes_freed,
                )
            except RcdsError as exc:
                log.error("cleanup of %s failed: %s", slot.name, exc)
                result.error = str(exc)
            finally:
                slot.cleaning = False
                self.wake()
                self.on_result(result, t)
        return result

    def _drop_orphan_stamps(self, cutoff: float) -> int:
        """Forget stamps older than the window whose CID exists in no repository any more."""
        known = set()
        for name in self.presence.names():
            known |= self.presence.cids_of(name)
        dropped = 0

        def forget(cid: str, t: int) -> bool:
            nonlocal dropped
            if cid not in known and t < cutoff:
                dropped += 1
                return True
            return False

        self.stamps.flush(forget=forget)
        return dropped
