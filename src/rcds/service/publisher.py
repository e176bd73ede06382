"""The publish queue: one FIFO, one worker per own repository, so repositories publish in parallel.

Whichever repository is free takes the next upload. A worker whose repository is being cleaned
takes nothing until the cleanup ends; the others go on. An upload that begins while a worker is
idle and nothing is queued is published while it arrives (:mod:`rcds.service.live`).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from rcds.errors import InputError, LockedError, RcdsError
from rcds.publish.policy import Limits
from rcds.publish.stratum0 import ChangeResult
from rcds.service.activity import Activity, ProgressReader, PublishEvent
from rcds.service.live import GaveWayError, LiveFeed
from rcds.service.presence import Presence
from rcds.service.slots import RepoSlot
from rcds.service.spool import Spool, Spooled
from rcds.service.stamps import StampBook
from rcds.service.status import State, StatusBook

log = logging.getLogger("rcds.service.publisher")
LOCK_WAIT = 30.0
"""Seconds a publish waits for a repository another process (an admin's command) is changing."""


@dataclass
class Job:
    """A spooled upload waiting for a repository."""

    item: Spooled
    identity: str
    queued_at: float = field(default_factory=time.monotonic)
    feed: LiveFeed | None = None
    """Set for a live job: the upload is still arriving (``item.path`` is its incoming file)."""


@dataclass(frozen=True)
class PublishRecord:
    """Timings of one publish (for benchmarks and logs)."""

    cid: str
    repository: str
    queue_wait: float
    ingest: float
    total: float
    commit: float = 0.0
    """Of ``ingest``: writing the catalogs, syncing and signing the new revision."""
    live: bool = False
    """Published while the upload arrived: ``ingest`` began with the upload, not after it."""
    finished: float = 0.0
    """Wall-clock time (``time.time()``) the revision became visible."""


class PublishQueue:
    """The shared queue and its workers."""

    def __init__(
        self,
        slots: Sequence[RepoSlot],
        presence: Presence,
        status: StatusBook,
        stamps: StampBook,
        spool: Spool,
        prefix: str,
        clock: Callable[[], float],
        limits: Limits | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.slots = list(slots)
        self.presence = presence
        self.status = status
        self.stamps = stamps
        self.spool = spool
        self.prefix = prefix
        self.clock = clock
        self.limits = limits
        self.activity = activity or Activity(clock=clock)
        self.records: collections.deque[PublishRecord] = collections.deque(maxlen=1000)
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._idle: set[str] = set()  # repositories whose worker waits for a job
        self._stop = False
        self._threads: list[threading.Thread] = []

    def submit(self, job: Job) -> None:
        """Queue a spooled upload."""
        self.status.set(job.item.cid, State.QUEUED)
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
            length = len(self._jobs)
        self.activity.queue_changed(length)

    def offer_live(self, job: Job) -> bool:
        """Hand an upload that has just begun to an idle worker; False if none is idle or
        others are queued (the upload is then queued when complete, as usual)."""
        with self._cond:
            if (
                self._stop
                or self._jobs
                or not any(s.name in self._idle and not s.cleaning for s in self.slots)
            ):
                return False
            self._jobs.append(job)
            self._cond.notify_all()
        return True

    def _upload_complete(
        self, feed: LiveFeed, give_way: Callable[[], bool], cid: str, repository: str
    ) -> None:
        """A live ingest's ``ready``: wait for the whole upload and its CID check."""
        feed.wait_verified(give_way)
        self.status.promote(cid, repository)

    def _give_way(self, slot: RepoSlot) -> bool:
        """True if a live job of ``slot`` waiting for data should let others go first."""
        return self._stop or slot.cleaning or bool(self._jobs)

    def wake(self) -> None:
        """Let workers re-check their repository's state (after a cleanup)."""
        with self._cond:
            self._cond.notify_all()

    def start(self) -> None:
        """Start one worker per repository."""
        for slot in self.slots:
            t = threading.Thread(target=self._worker, args=(slot,), name=f"publish-{slot.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; wait for running publishes to end (queued jobs stay spooled)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or publishing; True if that happened in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def queued(self) -> int:
        """Jobs waiting."""
        with self._cond:
            return len(self._jobs)

    def waiting(self, limit: int = 20) -> list[Job]:
        """The first ``limit`` jobs waiting, oldest first."""
        with self._cond:
            return [job for _, job in zip(range(limit), self._jobs, strict=False)]

    def _worker(self, slot: RepoSlot) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._jobs or slot.cleaning):
                    self._idle.add(slot.name)
                    self._cond.wait(5.0)
                self._idle.discard(slot.name)
                if self._stop:
                    return
                job = self._jobs.popleft()
                self._busy += 1
                length = len(self._jobs)
            self.activity.queue_changed(length)
            try:
                self._publish(slot, job)
            except Exception:  # e.g. the status file cannot be written: the worker must live on
                log.exception("publish of %s into %s crashed", job.item.cid, slot.name)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _ingest(self, slot: RepoSlot, job: Job, reader: ProgressReader) -> ChangeResult:
        """Ingest the upload; a repository locked by another writer is tried again for a while."""
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.05
        feed = job.feed
        while True:
            try:
                with slot.lock:
                    if feed is not None:
                        give_way = functools.partial(self._give_way, slot)
                        ready: Callable[[], None] | None = functools.partial(
                            self._upload_complete, feed, give_way, job.item.cid, slot.name
                        )
                        f: BinaryIO = feed.reader(give_way)  # type: ignore[assignment]
                    else:
                        ready, f = None, open(job.item.path, "rb")  # noqa: SIM115
                    with f:
                        reader.attach(f)
                        return slot.s0.ingest_tar(
                            reader,  # type: ignore[arg-type]
                            f"/{self.prefix}/{job.item.cid}",
                            limits=self.limits,
                            now=int(self.clock()),
                            ready=ready,
                        )
            except LockedError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("publish of %s waits: %s", job.item.cid, exc)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _publish(self, slot: RepoSlot, job: Job) -> None:
        cid = job.item.cid
        start = time.monotonic()
        where = self.presence.where(cid)
        if where is not None:
            self.status.set(cid, State.PUBLISHED, where)
            self.stamps.touch(cid)
            if job.feed is not None:
                self._end_live(job)
                return
            self.spool.discard(job.item)
            self.activity.finished(cid)
            return
        feed = job.feed
        if feed is None:
            self.status.set(cid, State.PUBLISHING, slot.name)
        elif feed.take(slot.name):  # a live job is RECEIVING until its upload is complete
            self.status.promote(cid, slot.name)
        reader = ProgressReader()
        self.activity.publishing(cid, slot.name, job.item.size, reader)
        try:
            result = self._ingest(slot, job, reader)
        except GaveWayError:
            log.info("publish of %s gives way to queued uploads; it is queued once received", cid)
            self.activity.finished(cid)
            return  # the upload is the handler's again: nothing to discard
        except InputError as exc:
            if feed is not None and feed.was_aborted:  # the handler has answered and released it
                log.info("live publish of %s stopped: %s", cid, exc)
                self._end_live(job)
                return
            log.warning("publish of %s by %s refused: %s", cid, job.identity, exc)
            self._failed(cid, slot.name, str(exc))
        except RcdsError as exc:
            log.error("publish of %s into %s failed: %s", cid, slot.name, exc)
            self._failed(cid, slot.name, str(exc))
        except Exception as exc:  # a bug must not kill the worker
            log.exception("publish of %s into %s crashed", cid, slot.name)
            self._failed(cid, slot.name, f"internal error: {type(exc).__name__}: {exc}")
        else:
            self.presence.add(slot.name, cid, result.revision)
            self.status.set(cid, State.PUBLISHED, slot.name)
            self.stamps.touch(cid)
            latency = time.monotonic() - job.queued_at
            self.activity.published(
                PublishEvent(
                    cid, slot.name, result.revision, job.item.size, latency, self.clock(), job.identity
                )
            )
            self.records.append(
                PublishRecord(
                    cid,
                    slot.name,
                    start - job.queued_at,
                    result.seconds,
                    time.monotonic() - job.queued_at,
                    result.commit_seconds,
                    live=feed is not None,
                    finished=time.time(),
                )
            )
            log.info(
                "published %s into %s as revision %d in %.2f s (queued %.2f s, signing %.2f s)",
                cid,
                slot.name,
                result.revision,
                result.seconds,
                start - job.queued_at,
                result.commit_seconds,
            )
        finally:
            if feed is None:
                self.spool.discard(job.item)
                self.activity.finished(cid)
        self._end_live(job)

    def _end_live(self, job: Job) -> None:
        """After a live job: wait for its upload's handler, then delete the spooled file."""
        if job.feed is not None:
            item = job.feed.wait_done()
            if item is not None:
                self.spool.discard(item)
            self.activity.finished(job.item.cid)

    def _failed(self, cid: str, repository: str, reason: str) -> None:
        self.activity.failed(cid, repository, reason)
        self.status.set(cid, State.FAILED, repository, reason)
