"""CPU of ``rcds get`` per process (main process, worker processes, server), A/B between source trees.

Run: ``python bench/get_cpu.py --keep DIR [--base-src SRC] [--rounds N] [--out DIR]``, where
``DIR`` is the work directory of an earlier ``bench/client.py --keep DIR`` run (its published
repository is reused). nginx serves the repository on loopback (``bench/nginx_site.py``); each
round copies the whole tree once with this tree's ``rcds`` and once with ``--base-src`` (if
given), in turn, onto ``--out`` (default: ``/dev/shm``, a tmpfs). Per copy it prints the wall
time, the CPU seconds of the ``rcds get`` process itself (rusage, read in that process at its
end), of its worker processes (its children's rusage) and of nginx (``/proc``), and the part of the
copy in which the last forked worker ran alone (from the first worker's end); then the medians.
CPU seconds are what to compare on a shared machine: other load moves them far less than the
wall time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from client_child import TREE
from common import proc_cpu_seconds as process_cpu
from get_ab import run_rounds

from client import REPO

_RUN = r"""
import os, resource, runpy, sys, time
t0 = time.perf_counter()
sys.argv = ["rcds", *sys.argv[1:]]
try:  # when each forked worker ends, and when they were forked: the copy's tail (one worker alone)
    from rcds.client.get import split as _split
except ImportError:
    _split = None
if _split is not None:
    _share, _init = _split.run_share, _split.SplitWorkers.__init__
    def _run_share(*a):
        try:
            return _share(*a)
        finally:
            os.write(2, b"END %.6f\n" % time.perf_counter())
    def _forked(self, *a):
        os.write(2, b"FORK %.6f\n" % time.perf_counter())
        _init(self, *a)
    _split.run_share, _split.SplitWorkers.__init__ = _run_share, _forked
MAIN, _exit = os.getpid(), os._exit
def tell():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(2, b"CPU %f %f %f\n" % (time.perf_counter() - t0, own.ru_utime + own.ru_stime,
                                     kids.ru_utime + kids.ru_stime))
def _exit_now(code):  # rcds.cli.main.exit_at_once: the figures first
    if os.getpid() == MAIN:
        tell()
    _exit(code)
os._exit = _exit_now
try:
    runpy.run_module("rcds.cli.main", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
tell()
"""


COMMAND = [sys.executable, "-c", _RUN, "get", "--no-progress"]


def where(work: Path) -> list[str]:
    """What to copy and where to."""
    return [f"{REPO}:{TREE}", str(work / "out")]


def show(name: str, wall: float, main: float, workers: float, server: float, tail: float) -> None:
    """Print one line of figures."""
    print(
        f"{name:>10}: wall {wall:.2f} s, CPU main {main:.2f}, workers {workers:.2f}, nginx {server:.2f}, "
        f"last worker alone {tail:.1f} %"
    )


def one_copy(src: Path | None, url: str, key: str, out: Path, server_pid: int) -> tuple[float, ...]:
    """Copy the tree once; (wall, main process CPU, workers CPU, server CPU, tail %)."""
    work = Path(tempfile.mkdtemp(prefix="rcds-get-cpu-", dir=out))
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    try:
        subprocess.run(["sync"], check=False)
        before = process_cpu(server_pid)
        done = subprocess.run(
            [*COMMAND, "--server", url, "--key", key, "--cache", str(work / "cache"), *where(work)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        server = process_cpu(server_pid) - before
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = done.stderr.splitlines()
    line = next(x for x in lines if x.startswith("CPU "))
    wall, main, workers = (float(v) for v in line.split()[1:])
    return wall, main, workers, server, tail_share(lines)


def tail_share(lines: list[str]) -> float:
    """The part of the copy's parallel phase (fork to the last worker's end) that the last worker
    ran alone (from its first colleague's end), in percent; 0 when the workers were not forked."""
    forks = [float(x.split()[1]) for x in lines if x.startswith("FORK ")]
    ends = sorted(float(x.split()[1]) for x in lines if x.startswith("END "))
    if not forks or len(ends) < 2:
        return 0.0
    return 100 * (ends[-1] - ends[0]) / max(1e-9, ends[-1] - forks[0])


def main() -> None:
    results = run_rounds(__doc__.split("\n\n")[0], "rcds-get-cpu", one_copy, lambda name, r: show(name, *r))
    print("medians (CPU seconds):")
    for name, rows in results.items():
        show(name, *(statistics.median(c) for c in zip(*rows, strict=True)))


if __name__ == "__main__":
    main()
