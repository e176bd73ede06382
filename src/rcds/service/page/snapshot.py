"""Everything the status page shows, gathered from memory in one pass (no disk access)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rcds.replica.snapshot import SnapshotResult
from rcds.service.activity import CleanupEvent, FailureEvent, PublishEvent, Running
from rcds.service.core import Service
from rcds.service.presence import RepoSummary


@dataclass(frozen=True)
class ReplicaState:
    """One partner repository as last pulled."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PageData:
    """A consistent-enough view of the service at ``now``."""

    now: float
    repositories: list[RepoSummary]
    queued: int
    waiting: list[Running]
    """The first queued uploads (at most 20), oldest first."""
    receiving: list[Running]
    publishing: list[Running]
    recent: list[PublishEvent]
    failures: list[FailureEvent]
    cleanups: dict[str, CleanupEvent]
    next_cleanups: dict[str, float]
    maxdays: int
    partner_url: str | None
    partner_last_pull: float | None
    partner_reachable: bool | None
    replicas: list[ReplicaState] = field(default_factory=list)
    latency: list[tuple[float, float, float, float]] = field(default_factory=list)
    """(time, mean, min, max) per bucket."""
    queue_length: list[tuple[float, float]] = field(default_factory=list)
    ingested: list[tuple[float, float]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)


def collect(service: Service, now: float | None = None) -> PageData:
    """Gather the page's data from ``service``'s in-memory state."""
    t = service.clock() if now is None else now
    act = service.activity
    receiving, publishing = act.in_flight()
    mono = time.monotonic()
    waiting = [
        Running(j.item.cid, None, j.item.size, t - (mono - j.queued_at), lambda: 0)
        for j in service.queue.waiting()
    ]
    recent, failures, cleanups, latency, queue, ingested = act.snapshot(t)
    replicas = []
    for name, res in sorted(service.partner.last_results.items()):
        if isinstance(res, SnapshotResult):
            replicas.append(
                ReplicaState(name, True, f"revision {res.revision}, {res.bytes_fetched} B fetched")
            )
        else:
            replicas.append(ReplicaState(name, False, str(res)))
    return PageData(
        now=t,
        repositories=service.presence.summaries(),
        queued=service.queue.queued(),
        waiting=waiting,
        receiving=receiving,
        publishing=publishing,
        recent=recent,
        failures=failures,
        cleanups=cleanups,
        next_cleanups=service.cleaner.next_runs(t),
        maxdays=service.config.cleanup.maxdays,
        partner_url=service.config.replica.partner_url if service.partner.enabled else None,
        partner_last_pull=service.partner.last_pull,
        partner_reachable=service.partner.partner_reachable,
        replicas=replicas,
        latency=latency,
        queue_length=queue,
        ingested=ingested,
        totals={
            "published": act.published_total,
            "failed": act.failed_total,
            "ingested_bytes": act.ingested_total,
        },
    )


def as_json(data: PageData) -> dict[str, object]:
    """The page's data as JSON-ready values (``Accept: application/json``)."""

    def running(r: Running) -> dict[str, object]:
        return {
            "cid": r.cid,
            "repository": r.repository,
            "size": r.size,
            "done": r.done(),
            "started": r.started,
        }

    return {
        "now": data.now,
        "repositories": [vars(r) for r in data.repositories],
        "queued": data.queued,
        "waiting": [running(r) for r in data.waiting],
        "receiving": [running(r) for r in data.receiving],
        "publishing": [running(r) for r in data.publishing],
        "recent": [vars(e) for e in data.recent],
        "failures": [vars(e) for e in data.failures],
        "cleanups": {k: vars(v) for k, v in data.cleanups.items()},
        "next_cleanups": data.next_cleanups,
        "partner": {
            "url": data.partner_url,
            "last_pull": data.partner_last_pull,
            "reachable": data.partner_reachable,
            "replicas": [vars(r) for r in data.replicas],
        },
        "totals": data.totals,
    }
