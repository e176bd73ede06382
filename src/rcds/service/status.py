"""What happened to each CID this server received: queued, publishing, published or failed (with why).

Failures are kept on disk (``spool/failed/<cid with / as %2F>.json``) so a client asking after a
restart still learns why its publish failed; a new upload of the CID clears the failure.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from rcds.clock import Clock, system_clock
from rcds.service.spool import cid_filename


class State(Enum):
    """Life cycle of an upload."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"


@dataclass(frozen=True)
class CidStatus:
    """The last known state of a CID on this server."""

    cid: str
    state: State
    repository: str | None = None
    reason: str | None = None
    updated: float = 0.0

    def as_json(self) -> dict[str, object]:
        """A JSON-ready mapping."""
        d = asdict(self)
        d["state"] = self.state.value
        return d


class StatusBook:
    """Thread-safe CID states; claims make concurrent uploads of one CID publish it once."""

    ACTIVE = (State.RECEIVING, State.QUEUED, State.PUBLISHING)

    def __init__(self, failed_dir: Path, clock: Clock = system_clock) -> None:
        self.failed_dir = Path(failed_dir)
        self.clock = clock
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._states: dict[str, CidStatus] = {}
        for p in self.failed_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                d = json.loads(p.read_text())
                self._states[d["cid"]] = CidStatus(
                    d["cid"], State.FAILED, d.get("repository"), d.get("reason"), float(d.get("updated", 0))
                )

    def _file(self, cid: str) -> Path:
        return self.failed_dir / cid_filename(cid, ".json")

    def get(self, cid: str) -> CidStatus | None:
        """The state of ``cid``, if this server has seen it."""
        with self._lock:
            return self._states.get(cid)

    def claim(self, cid: str) -> bool:
        """Mark ``cid`` as being received unless an upload of it is already active; True if claimed."""
        with self._lock:
            cur = self._states.get(cid)
            if cur is not None and cur.state in self.ACTIVE:
                return False
            self._states[cid] = CidStatus(cid, State.RECEIVING, updated=self.clock())
        with contextlib.suppress(OSError):  # an old failure record; harmless if it stays
            self._file(cid).unlink()
        return True

    def set(self, cid: str, state: State, repository: str | None = None, reason: str | None = None) -> None:
        """Record a new state (a failure is also written to disk)."""
        status = CidStatus(cid, state, repository, reason, self.clock())
        with self._lock:
            self._states[cid] = status
        if state is State.FAILED:
            self._file(cid).write_text(json.dumps(status.as_json()) + "\n")

    def promote(self, cid: str, repository: str | None) -> None:
        """``receiving`` → ``publishing`` (a live publish whose upload is complete); any other
        state stays (the publish may have ended already)."""
        with self._lock:
            cur = self._states.get(cid)
            if cur is not None and cur.state is State.RECEIVING:
                self._states[cid] = CidStatus(cid, State.PUBLISHING, repository, None, self.clock())

    def release(self, cid: str) -> None:
        """Forget an active claim that produced nothing (an upload refused or interrupted)."""
        with self._lock:
            cur = self._states.get(cid)
            if cur is not None and cur.state is State.RECEIVING:
                del self._states[cid]

    def active(self) -> frozenset[str]:
        """CIDs being received, queued or published right now (never cleaned up)."""
        with self._lock:
            return frozenset(c for c, s in self._states.items() if s.state in self.ACTIVE)
