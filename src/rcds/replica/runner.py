"""A stratum 1 that keeps many replicas fresh: pulls on a trigger, with an interval as fallback.

:class:`ReplicaRunner` owns one schedule per repository and a small pool of pull threads:

* a **trigger** (:meth:`ReplicaRunner.notify`, the :class:`PullTrigger` interface) says
  "repository X has a new manifest"; the repository is pulled at once. A notification
  subscriber (stock CernVM-FS protocol) calls it with the manifest it received; the manifest
  is only a hint: one that is not newer than the replica's revision is ignored, anything else
  leads to an ordinary pull, which verifies everything from the upstream itself;
* without triggers every repository is pulled every ``interval`` seconds (after a failure, the
  next try comes after ``min(interval, retry)``);
* one pull per repository at a time; a trigger that arrives during a pull makes another pull
  follow immediately (the notified revision may be newer than the one being pulled);
* at most ``parallel`` pulls at once, each with ``workers`` download threads.

Results go to ``on_result(fqrn, result_or_error)`` (e.g. to publish a notification downstream
or to log), and :meth:`ReplicaRunner.status` reports the last outcome per repository.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rcds.errors import ConfigError, IntegrityError, RcdsError
from rcds.format import manifest as manifest_fmt
from rcds.replica.replicator import ReplicaSpec, Replicator
from rcds.replica.snapshot import SnapshotResult
from rcds.storage.locate import open_store

log = logging.getLogger("rcds.replica")

ResultHook = Callable[[str, "SnapshotResult | RcdsError"], None]


class PullTrigger(Protocol):
    """What a notification subscriber needs from a stratum 1: "repository X has a new manifest"."""

    def notify(self, fqrn: str, manifest: bytes | None = None) -> bool:
        """Pull ``fqrn`` now (``manifest``: the signed manifest announced, if known); True if scheduled."""
        ...


@dataclass
class _Repo:
    spec: ReplicaSpec
    next_due: float = 0.0
    triggered: bool = False
    running: bool = False
    revision: int | None = None
    last: SnapshotResult | RcdsError | None = None
    last_end: float | None = None
    pulls: int = 0
    failures: int = 0
    waiters: list[threading.Event] = field(default_factory=list)


@dataclass(frozen=True)
class RepoStatus:
    """One repository's state for :meth:`ReplicaRunner.status`."""

    fqrn: str
    revision: int | None
    pulls: int
    failures: int
    running: bool
    last_error: str | None


class ReplicaRunner:
    """Pulls the replicas in ``specs`` on triggers and every ``interval`` seconds (see module doc)."""

    def __init__(
        self,
        specs: Sequence[ReplicaSpec],
        *,
        interval: float = 60.0,
        retry: float = 10.0,
        parallel: int = 2,
        replicator: Replicator | None = None,
        on_result: ResultHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or retry <= 0:
            raise ConfigError("the pull interval and retry delay must be positive numbers of seconds")
        if parallel < 1:
            raise ConfigError("at least one pull must be allowed to run at a time (parallel >= 1)")
        names = [s.fqrn for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"a repository is listed twice among {names}")
        self.interval = interval
        self.retry = retry
        self.replicator = replicator or Replicator()
        self.on_result = on_result
        self._clock = clock
        self._repos = {s.fqrn: _Repo(s, revision=_held_revision(s)) for s in specs}
        self._cond = threading.Condition()
        self._pool = cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rcds-replica-pull")
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- the trigger interface ---------------------------------------------------------------------

    def notify(self, fqrn: str, manifest: bytes | None = None) -> bool:
        """Schedule an immediate pull of ``fqrn``; see :class:`PullTrigger`.

        Returns False (and does nothing) for an unknown repository, or when ``manifest`` is
        given and parses to a revision the replica already has (or is for another repository).
        """
        with self._cond:
            repo = self._repos.get(fqrn)
            if repo is None:
                log.info("notification for %s ignored: not replicated here", fqrn)
                return False
            if manifest is not None:
                try:
                    announced = manifest_fmt.parse(manifest).manifest
                except IntegrityError as exc:
                    log.warning("notification for %s ignored: unreadable manifest (%s)", fqrn, exc)
                    return False
                if announced.repository_name != fqrn:
                    log.warning("notification for %s ignored: its manifest is for another repository", fqrn)
                    return False
                if repo.revision is not None and announced.revision <= repo.revision:
                    return False
            repo.triggered = True
            self._cond.notify_all()
            return True

    def pull_now(self, fqrn: str, timeout: float | None = None) -> SnapshotResult | RcdsError | None:
        """Trigger a pull of ``fqrn`` and wait for the pull that starts after this call to end."""
        done = threading.Event()
        with self._cond:
            if fqrn not in self._repos:
                raise ConfigError(f"{fqrn} is not one of the replicated repositories")
            repo = self._repos[fqrn]
            repo.triggered = True
            repo.waiters.append(done)
            self._cond.notify_all()
        done.wait(timeout)
        with self._cond:
            return repo.last

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (every repository is pulled once right away)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rcds-replica-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling, wait for running pulls (at most ``timeout`` seconds for the scheduler)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReplicaRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                wait = self.interval
                for repo in self._repos.values():
                    if repo.running:
                        continue
                    if repo.triggered or repo.next_due <= now:
                        repo.running, repo.triggered = True, False
                        self._pool.submit(self._pull, repo)
                    else:
                        wait = min(wait, repo.next_due - now)
                self._cond.wait(max(wait, 0.0))

    def _pull(self, repo: _Repo) -> None:
        waiters: list[threading.Event]
        with self._cond:
            waiters, repo.waiters = repo.waiters, []
        result: SnapshotResult | RcdsError
        try:
            result = self.replicator.pull(repo.spec)
        except RcdsError as exc:
            log.warning("pull of %s from %s failed: %s", repo.spec.fqrn, repo.spec.url, exc)
            result = exc
        except Exception as exc:  # a bug: report it, keep the other repositories going
            log.exception("pull of %s crashed", repo.spec.fqrn)
            result = RcdsError(f"internal error while pulling {repo.spec.fqrn}: {exc!r}")
        with self._cond:
            now = self._clock()
            repo.running = False
            repo.last, repo.last_end = result, now
            repo.pulls += 1
            if isinstance(result, SnapshotResult):
                repo.revision = result.revision
                repo.next_due = now + self.interval
            else:
                repo.failures += 1
                repo.next_due = now + min(self.interval, self.retry)
            self._cond.notify_all()
        if self.on_result is not None:
            try:
                self.on_result(repo.spec.fqrn, result)
            except Exception:
                log.exception("the result hook failed for %s", repo.spec.fqrn)
        for w in waiters:
            w.set()

    def status(self) -> list[RepoStatus]:
        """The state of every repository, by name."""
        with self._cond:
            return [
                RepoStatus(
                    fqrn=name,
                    revision=r.revision,
                    pulls=r.pulls,
                    failures=r.failures,
                    running=r.running,
                    last_error=str(r.last) if isinstance(r.last, RcdsError) else None,
                )
                for name, r in sorted(self._repos.items())
            ]


def _held_revision(spec: ReplicaSpec) -> int | None:
    try:
        if isinstance(spec.dest, Path):
            data = (spec.dest / ".cvmfspublished").read_bytes()
        else:
            store = open_store(spec.dest)
            try:
                data = store.get(".cvmfspublished")
            finally:
                store.close()
        return manifest_fmt.parse(data).manifest.revision
    except (OSError, RcdsError):
        return None
