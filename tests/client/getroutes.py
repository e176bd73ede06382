"""The routes a ``rcds get`` can take, for tests that hold every route to the same contract.

- ``inprocess``: a small tree, downloads in threads of this process (the defaults);
- ``procs``: worker processes (:mod:`rcds.client.get.procs`) that take batches of the plan,
  their threshold lowered so that the few hundred files of the ``many`` tree go through them;
- ``split``: forked workers that plan their own shares (:mod:`rcds.client.get.split`), the split
  threshold lowered and the fork allowed beside the test servers' threads (which the forked
  workers never touch).

Every route records the worker sets of both kinds that were started, so that a test checks the
route it names is the one the copy took (:meth:`Route.took`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import pytest

from rcds.client.get import downloads as getdownloads
from rcds.client.get import procs as getprocs
from rcds.client.get import share as getshare
from rcds.client.get import split as getsplit
from rcds.client.get.procs import GetProcesses
from rcds.client.get.split import SplitWorkers

ROUTES = ("inprocess", "procs", "split")
WORKER_ROUTES = ("procs", "split")


@dataclass
class Route:
    """One way of copying, set up on a test's monkeypatch; what it started."""

    name: str
    monkeypatch: pytest.MonkeyPatch
    pools: list[GetProcesses] = field(default_factory=list)
    splits: list[SplitWorkers] = field(default_factory=list)

    processes = 2
    """What the tests pass as ``materialize(processes=...)``."""

    @property
    def fetches_once(self) -> bool:
        """Whether each distinct object is downloaded once (a split downloads once per share)."""
        return self.name != "split"

    @property
    def workers(self) -> int:
        """How many worker processes the route starts."""
        return 0 if self.name == "inprocess" else self.processes

    def took(self) -> bool:
        """The copies so far went this route (and no other one was started)."""
        if self.name == "procs":
            return bool(self.pools) and not self.splits
        if self.name == "split":
            return bool(self.splits) and not self.pools
        return not self.pools and not self.splits

    def running(self) -> list[int]:
        """The worker processes a copy still holds (started and neither stopped nor reaped)."""
        return [w.pid for pool in self.pools for w in pool.workers] + [
            pid for split in self.splits for pid in split.kids
        ]

    def busy_worker(self) -> int | None:
        """A worker of the running copy that has not finished its work yet, if there is one."""
        if self.pools and self.pools[0].workers:
            return self.pools[0].workers[0].pid
        if self.splits:
            busy = [pid for pid in self.splits[0].kids if pid not in self.splits[0].finished]
            return busy[0] if busy else None
        return None

    def refuse_workers(self) -> list[int]:
        """Make starting the workers fail as fork does at the process limit; the attempts made."""
        calls: list[int] = []

        def refuse(*args: object) -> int:
            calls.append(1)
            raise BlockingIOError(11, "Resource temporarily unavailable")

        if self.name == "procs":
            self.monkeypatch.setattr(GetProcesses, "__init__", refuse)
        else:
            self.monkeypatch.setattr(getsplit.os, "fork", refuse)
        return calls


def gone(pid: int) -> bool:
    """Whether process ``pid`` no longer exists (reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_outright(pid: int) -> None:
    """SIGKILL ``pid``."""
    os.kill(pid, signal.SIGKILL)


def set_up(name: str, monkeypatch: pytest.MonkeyPatch) -> Route:
    """Set ``monkeypatch`` up so that copies of the ``many`` tree go route ``name``."""
    route = Route(name, monkeypatch)
    if name == "procs":
        monkeypatch.setattr(getdownloads, "MIN_OBJECTS", 20)
        monkeypatch.setattr(getprocs, "MIN_BATCH", 8)
        monkeypatch.setattr(getprocs, "BATCH_OBJECTS", 40)
    elif name == "split":
        monkeypatch.setattr(getsplit, "SPLIT_MIN_ROWS", 1)
        monkeypatch.setattr(getsplit, "FORK_WITH_THREADS", True)
        monkeypatch.setattr(getshare, "REPORT_EVERY", 16)
    real_pool, real_split = GetProcesses.__init__, SplitWorkers.__init__

    def pool(self: GetProcesses, count: int) -> None:
        real_pool(self, count)
        route.pools.append(self)

    def split(self: SplitWorkers, task: getshare.ShareTask, count: int) -> None:
        real_split(self, task, count)
        route.splits.append(self)

    monkeypatch.setattr(GetProcesses, "__init__", pool)
    monkeypatch.setattr(SplitWorkers, "__init__", split)
    return route


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Route:
    """Each route of ``rcds get`` in turn."""
    return set_up(request.param, monkeypatch)


@pytest.fixture(params=WORKER_ROUTES)
def worker_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Route:
    """Each route of ``rcds get`` that uses worker processes, in turn."""
    return set_up(request.param, monkeypatch)
