"""The threads and child processes of a process, from ``/proc``: for the benches that add up the
CPU of a process and of the workers it started."""

from __future__ import annotations

import os
from collections.abc import Iterable

from common import proc_cpu_seconds


def tasks(pid: int | str) -> list[int]:
    """The thread ids of a live process (``/proc/PID/task``), or [] if it is gone."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def children(pid: int | str) -> list[int]:
    """The live child processes of ``pid`` (started by any of its threads), or [] if it is gone."""
    kids: list[int] = []
    for tid in tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return kids


def cpu_seconds(pids: Iterable[int | str]) -> float:
    """User + system CPU seconds so far of those of ``pids`` still alive."""
    return sum(proc_cpu_seconds(pid) for pid in pids)
