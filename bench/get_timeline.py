"""Where the wall time of one ``rcds get`` goes: a timeline of its phases, A/B between source trees.

Run: ``python bench/get_timeline.py --keep DIR [--base-src SRC] [--rounds N] [--out DIR]``, with
``DIR`` the work directory of an earlier ``bench/client.py --keep DIR`` run (its published
repository is reused), served by nginx on loopback as in ``bench/get_cpu.py``. Each copy runs
in a fresh process that marks, in seconds from just before the harness started it: the
interpreter's first line (``start``), the imports of the CLI done (``imported``), the walk of
the catalogs over (``walked``: the split starts), the workers forked (``forked``), each worker's
first share taken and its end (``w-first``, ``w-end``), the main process's copy over (``copied``)
and its exit (``exit``, read by the harness). The medians per tree are printed, with the CPU
seconds of the main process and of its workers. The serial part (``forked``) runs with one core
idle on a 2-core machine: half of it is wall that the workers cannot take back.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client_child import TREE
from get_ab import run_rounds

from client import REPO

_RUN = r"""
import os, sys, time
T0 = float(os.environ["RCDS_TL_T0"])
def mark(name):
    os.write(2, b"TL %s %.6f %.6f\n" % (name.encode(), time.time() - T0, time.process_time()))
mark("start")
import resource, runpy
import rcds.cli.main, rcds.cli.client
mark("imported")
from rcds.client.get import materialize as _mat, split as _split
_share, _init, _task = _split.run_share, _split.SplitWorkers.__init__, _mat.split_task
def _run_share(task, k, conn):
    _read = os.read
    first = [True]
    def read(fd, n):
        b = _read(fd, n)
        if first[0]:
            first[0] = False
            mark("w-first")
        return b
    _split.run_share.__globals__["os"].read = read
    try:
        return _share(task, k, conn)
    finally:
        mark("w-end")
def _forked(self, *a):
    _init(self, *a)
    mark("forked")
def _split_task(*a):
    mark("walked")
    return _task(*a)
_split.run_share, _split.SplitWorkers.__init__, _mat.split_task = _run_share, _forked, _split_task
_m = _mat.materialize
def _materialize(*a, **k):
    try:
        return _m(*a, **k)
    finally:
        mark("copied")
_mat.materialize = _materialize
import rcds.cli.client as _cc
if hasattr(_cc, "materialize"):
    _cc.materialize = _materialize
MAIN, _exit = os.getpid(), os._exit
def tell():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(2, b"CPU %.4f %.4f\n" % (own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime))
def _exit_now(code):  # rcds.cli.main.exit_at_once: the figures first
    if os.getpid() == MAIN:
        tell()
    _exit(code)
os._exit = _exit_now
sys.argv = ["rcds", *sys.argv[1:]]
try:
    runpy.run_module("rcds.cli.main", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
tell()
"""

PHASES = ("start", "imported", "walked", "forked", "w-first", "w-end", "copied", "exit")
MAIN_CPU = ("imported", "walked", "forked", "copied")
"""Marks made by the main process: its CPU seconds there are printed too."""


def children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs, once reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_copy(src: Path | None, url: str, key: str, out: Path) -> dict[str, float]:
    """Copy the tree once; the time of each phase (first worker's ``w-first``, last ``w-end``)."""
    work = Path(tempfile.mkdtemp(prefix="rcds-get-tl-", dir=out))
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    try:
        subprocess.run(["sync"], check=False)
        t0 = time.time()
        env["RCDS_TL_T0"] = repr(t0)
        before = children_cpu()
        command = [sys.executable, "-c", _RUN, "get", "--no-progress", "--server", url, "--key", key]
        done = subprocess.run(
            [*command, "--cache", str(work / "cache"), f"{REPO}:{TREE}", str(work / "out")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        end = time.time() - t0
        total = children_cpu() - before
    finally:
        shutil.rmtree(work, ignore_errors=True)
    marks: dict[str, list[float]] = {}
    got: dict[str, float] = {"exit": end}
    for line in done.stderr.splitlines():
        parts = line.split()
        if parts[:1] == ["TL"]:
            marks.setdefault(parts[1], []).append(float(parts[2]))
            if parts[1] in MAIN_CPU:
                got[f"cpu@{parts[1]}"] = float(parts[3])
            elif parts[1] == "w-first":  # a worker's CPU before its first share: its start-up
                got["cpu@w-first"] = max(got.get("cpu@w-first", 0.0), float(parts[3]))
        elif parts[:1] == ["CPU"]:
            got["cpu-main"], got["cpu-workers"] = float(parts[1]), float(parts[2])
    if "cpu-main" in got:  # what the process spent after its last mark: the interpreter's exit
        got["cpu-exit"] = total - got["cpu-main"] - got["cpu-workers"]
    for name, times in marks.items():
        got[name] = min(times) if name == "w-first" else max(times)
    return got


def show(name: str, got: dict[str, float]) -> None:
    """One line: each phase's time, and the CPU seconds."""
    text = ", ".join(f"{p} {got[p]:.3f}" for p in PHASES if p in got)
    at = " ".join(f"{p} {got[f'cpu@{p}']:.3f}" for p in MAIN_CPU if f"cpu@{p}" in got)
    at += f"; a worker's start-up {got.get('cpu@w-first', 0):.3f}"
    cpu = (
        f"CPU main {got.get('cpu-main', 0):.3f} ({at}), exit {got.get('cpu-exit', 0):.3f}, "
        f"workers {got.get('cpu-workers', 0):.2f}"
    )
    print(f"{name:>10}: {text}; {cpu}")


def main() -> None:
    results = run_rounds(
        __doc__.split("\n\n")[0],
        "rcds-get-tl",
        lambda src, url, key, out, _pid: one_copy(src, url, key, out),
        show,
    )
    print("medians (seconds from the harness's start of the process):")
    for name, rows in results.items():
        keys = set.intersection(*(set(r) for r in rows))
        show(name, {k: statistics.median(r[k] for r in rows) for k in keys})


if __name__ == "__main__":
    main()
