"""What the service did lately, kept in memory for the status page and ``/metrics``.

Everything here is bounded and updated as things happen (counters, ring buffers and
fixed-width time buckets), so reading it costs the same with ten CIDs or a million: the
status page never walks a disk or a CID index.

* uploads being received and publishes in flight, with progress;
* the last publishes and failures (with the reason);
* the last cleanup result of each repository;
* time series over the last hours: publish latency (upload end to PRESENT), queue length,
  bytes ingested.
"""

from __future__ import annotations

import collections
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from rcds.metrics.definitions import PublishMetrics

BUCKET_SECONDS = 60.0
"""Width of one time-series bucket."""
HOURS = 6
"""How far back the time series go."""
RECENT = 50
"""How many publishes and failures the page lists."""


class ProgressReader:
    """A binary stream wrapper counting the bytes read (the publish's progress through its tarball).

    It may be created before its stream is open (the publish waits for its repository) and
    :meth:`attach` ed later.
    """

    def __init__(self, inner: BinaryIO | None = None) -> None:
        self.inner: BinaryIO = inner if inner is not None else io.BytesIO()
        self.done = 0

    def attach(self, inner: BinaryIO) -> None:
        """Read from ``inner`` from now on, counting from 0."""
        self.inner = inner
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        """Read and count."""
        data = self.inner.read(n)
        self.done += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into ``buffer`` and count."""
        n = self.inner.readinto(buffer)  # type: ignore[attr-defined]
        self.done += int(n or 0)
        return int(n or 0)


@dataclass(frozen=True)
class Running:
    """An upload being received or a publish in flight."""

    cid: str
    repository: str | None
    size: int | None
    """Total bytes expected (None: unknown, e.g. a chunked upload)."""
    started: float
    done: Callable[[], int]
    """Bytes received or read so far."""


@dataclass(frozen=True)
class PublishEvent:
    """A finished publish."""

    cid: str
    repository: str
    revision: int
    size: int
    latency: float
    """Upload end to PRESENT, seconds."""
    finished: float
    identity: str


@dataclass(frozen=True)
class FailureEvent:
    """A publish that failed, and why."""

    cid: str
    repository: str | None
    reason: str
    at: float


@dataclass(frozen=True)
class CleanupEvent:
    """The result of one cleanup of one repository."""

    repository: str
    at: float
    removed: int
    kept: int
    stamps_dropped: int
    bytes_freed: int
    error: str | None = None


class Series:
    """Values in fixed-width time buckets over a window; a bucket keeps the sum or the maximum."""

    def __init__(
        self, width: float = BUCKET_SECONDS, hours: float = HOURS, *, keep_max: bool = False
    ) -> None:
        self.width = width
        self.count = int(hours * 3600 / width)
        self.keep_max = keep_max
        self._buckets: collections.OrderedDict[int, float] = collections.OrderedDict()

    def add(self, t: float, value: float) -> None:
        """Add ``value`` to (or raise the maximum of) the bucket of time ``t``."""
        key = int(t // self.width)
        old = self._buckets.get(key)
        if old is None:
            self._buckets[key] = value
            while len(self._buckets) > self.count:
                self._buckets.popitem(last=False)
        else:
            self._buckets[key] = max(old, value) if self.keep_max else old + value

    def points(self, now: float) -> list[tuple[float, float]]:
        """(bucket start time, value) of the buckets within the window before ``now``, oldest first."""
        first = int(now // self.width) - self.count + 1
        return [(k * self.width, v) for k, v in self._buckets.items() if k >= first]


class RangeSeries:
    """Per fixed-width time bucket: count, sum, minimum and maximum of the values (for mean and range)."""

    def __init__(self, width: float = BUCKET_SECONDS, hours: float = HOURS) -> None:
        self.width = width
        self.count = int(hours * 3600 / width)
        self._buckets: collections.OrderedDict[int, list[float]] = collections.OrderedDict()

    def add(self, t: float, value: float) -> None:
        """Account ``value`` in the bucket of time ``t``."""
        key = int(t // self.width)
        b = self._buckets.get(key)
        if b is None:
            self._buckets[key] = [1, value, value, value]
            while len(self._buckets) > self.count:
                self._buckets.popitem(last=False)
        else:
            b[0] += 1
            b[1] += value
            b[2] = min(b[2], value)
            b[3] = max(b[3], value)

    def points(self, now: float) -> list[tuple[float, float, float, float]]:
        """(bucket middle, mean, min, max) of the buckets within the window before ``now`` (the
        current bucket's point at ``now`` at the latest, never in the future)."""
        first = int(now // self.width) - self.count + 1
        return [
            (min((k + 0.5) * self.width, now), b[1] / b[0], b[2], b[3])
            for k, b in self._buckets.items()
            if k >= first
        ]


class Activity:
    """The in-memory record; thread safe. ``metrics`` (optional) is updated alongside."""

    def __init__(self, metrics: PublishMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._receiving: dict[int, Running] = {}
        self._publishing: dict[str, Running] = {}
        self.recent: collections.deque[PublishEvent] = collections.deque(maxlen=RECENT)
        self.failures: collections.deque[FailureEvent] = collections.deque(maxlen=RECENT)
        self.cleanups: dict[str, CleanupEvent] = {}
        self.latency = RangeSeries()
        self.queue_length = Series(keep_max=True)
        self.ingested = Series()
        self.published_total = 0
        self.failed_total = 0
        self.ingested_total = 0

    # -- uploads ------------------------------------------------------------------------
    def receiving(self, key: int, cid: str, size: int | None, done: Callable[[], int]) -> None:
        """An upload started (``key`` identifies it until :meth:`received`)."""
        with self._lock:
            self._receiving[key] = Running(cid, None, size, self.clock(), done)

    def received(self, key: int) -> None:
        """An upload ended (committed, refused or interrupted)."""
        with self._lock:
            self._receiving.pop(key, None)

    # -- the queue and publishes ---------------------------------------------------------
    def queue_changed(self, length: int) -> None:
        """Note the queue's length now."""
        with self._lock:
            self.queue_length.add(self.clock(), length)

    def publishing(self, cid: str, repository: str, size: int, reader: ProgressReader) -> None:
        """A publish started reading its tarball."""
        with self._lock:
            self._publishing[cid] = Running(cid, repository, size, self.clock(), lambda: reader.done)

    def published(self, event: PublishEvent) -> None:
        """A publish succeeded."""
        with self._lock:
            self._publishing.pop(event.cid, None)
            self.recent.append(event)
            self.latency.add(event.finished, event.latency)
            self.ingested.add(event.finished, event.size)
            self.published_total += 1
            self.ingested_total += event.size
        if self.metrics is not None:
            self.metrics.duration.labels(event.repository).observe(event.latency)
            self.metrics.outcomes.labels(event.repository, "published").inc()
            self.metrics.ingested.labels(event.repository).inc(event.size)

    def failed(self, cid: str, repository: str | None, reason: str) -> None:
        """A publish failed."""
        with self._lock:
            self._publishing.pop(cid, None)
            self.failures.append(FailureEvent(cid, repository, reason, self.clock()))
            self.failed_total += 1
        if self.metrics is not None:
            self.metrics.outcomes.labels(repository or "", "failed").inc()

    def finished(self, cid: str) -> None:
        """A publish ended without a result of its own (the CID was published elsewhere meanwhile)."""
        with self._lock:
            self._publishing.pop(cid, None)

    # -- cleanup -------------------------------------------------------------------------
    def cleaned(self, event: CleanupEvent) -> None:
        """A cleanup of one repository ended."""
        with self._lock:
            self.cleanups[event.repository] = event
        if self.metrics is not None:
            outcome = "failed" if event.error else "ok"
            self.metrics.cleanup_runs.labels(event.repository, outcome).inc()
            self.metrics.cleanup_removed.labels(event.repository).inc(event.removed)
            self.metrics.cleanup_freed.labels(event.repository).inc(event.bytes_freed)

    # -- reading -------------------------------------------------------------------------
    def in_flight(self) -> tuple[list[Running], list[Running]]:
        """(uploads being received, publishes running), oldest first."""
        with self._lock:
            return (
                sorted(self._receiving.values(), key=lambda r: r.started),
                sorted(self._publishing.values(), key=lambda r: r.started),
            )

    def snapshot(
        self, now: float
    ) -> tuple[
        list[PublishEvent],
        list[FailureEvent],
        dict[str, CleanupEvent],
        list[tuple[float, float, float, float]],
        list[tuple[float, float]],
        list[tuple[float, float]],
    ]:
        """Recent publishes and failures (newest first), cleanups, and the three series."""
        with self._lock:
            return (
                list(reversed(self.recent)),
                list(reversed(self.failures)),
                dict(self.cleanups),
                self.latency.points(now),
                self.queue_length.points(now),
                self.ingested.points(now),
            )
