"""'Last used' stamps: files ``/<stamp_prefix>/<cid>`` whose mtime is the last publish or update.

Touches are collected in memory and written in batches: one revision per repository per flush,
rewriting the stamp catalog (``/<stamp_prefix>`` is its own nested catalog). A stamp goes into
the own repository that holds the CID, else into the first own repository; cleanup reads the
stamps of every repository, own and replicas, so a CID used through any server counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from rcds.errors import RcdsError
from rcds.publish.members import Kind, Member
from rcds.service.presence import Presence
from rcds.service.repo_reader import Tree, published, stamp_times
from rcds.service.slots import RepoSlot

log = logging.getLogger("rcds.service.stamps")


def _empty(_n: int) -> bytes:
    return b""


def stamp_members(stamps: dict[str, int]) -> Iterator[Member]:
    """Members for a stamp tree: an empty file per CID with the stamp time as mtime."""
    dirs = sorted({cid.rsplit("/", 1)[0] for cid in stamps if "/" in cid})
    for d in dirs:
        yield Member(d, Kind.DIR, 0o755, max(t for c, t in stamps.items() if c.startswith(d + "/")))
    for cid in sorted(stamps):
        yield Member(cid, Kind.FILE, 0o644, stamps[cid], size=0, read=_empty)


class StampBook:
    """Pending touches and the batched writer."""

    def __init__(
        self, slots: Sequence[RepoSlot], presence: Presence, stamp_prefix: str, clock: Callable[[], float]
    ) -> None:
        self.slots = {s.name: s for s in slots}
        self.order = [s.name for s in slots]
        self.presence = presence
        self.stamp_prefix = stamp_prefix
        self.clock = clock
        self._pending: dict[str, dict[str, int]] = {name: {} for name in self.order}
        self._lock = threading.Lock()

    def touch(self, cid: str, now: float | None = None) -> None:
        """Record a use of ``cid`` (written at the next flush)."""
        where = self.presence.where(cid)
        repo = where if where in self.slots else self.order[0]
        t = int(now if now is not None else self.clock())
        with self._lock:
            cur = self._pending[repo].get(cid, 0)
            self._pending[repo][cid] = max(cur, t)

    def pending(self) -> dict[str, int]:
        """Every pending touch (CID -> time), across repositories."""
        out: dict[str, int] = {}
        with self._lock:
            for touches in self._pending.values():
                for cid, t in touches.items():
                    out[cid] = max(out.get(cid, 0), t)
        return out

    def flush(self, forget: Callable[[str, int], bool] | None = None) -> int:
        """Write pending touches; ``forget(cid, time)`` drops existing stamps (orphans). Returns revisions."""
        revisions = 0
        for name in self.order:
            with self._lock:
                touches, self._pending[name] = self._pending[name], {}
            if not touches and forget is None:
                continue
            slot = self.slots[name]
            try:
                with slot.lock:
                    rev = published(slot.public)
                    stamps = stamp_times(slot.public, rev, self.stamp_prefix) if rev else {}
                    before = dict(stamps)
                    for cid, t in touches.items():
                        stamps[cid] = max(stamps.get(cid, 0), t)
                    if forget is not None:
                        stamps = {c: t for c, t in stamps.items() if c in touches or not forget(c, t)}
                    if stamps == before:
                        continue
                    now = int(self.clock())
                    path = f"/{self.stamp_prefix}"
                    if stamps:
                        slot.s0.ingest(stamp_members(stamps), path, replace=True, now=now)
                    else:
                        slot.s0.remove_many([path], missing_ok=True, now=now)
                    revisions += 1
            except RcdsError as exc:
                log.error("cannot write %d stamps into %s: %s; will retry", len(touches), name, exc)
                with self._lock:
                    for cid, t in touches.items():
                        self._pending[name][cid] = max(self._pending[name].get(cid, 0), t)
        return revisions

    def all_stamps(self, publics: Mapping[str, Tree]) -> dict[str, int]:
        """CID -> newest stamp over the given repository trees (name -> public dir) and pending touches."""
        out = self.pending()
        for name, public in publics.items():
            try:
                rev = published(public)
                if rev is None:
                    continue
                for cid, t in stamp_times(public, rev, self.stamp_prefix).items():
                    out[cid] = max(out.get(cid, 0), t)
            except RcdsError as exc:
                log.warning("cannot read stamps of %s: %s", name, exc)
        return out
