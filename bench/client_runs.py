"""The timed runs of ``bench/client.py``: fresh child processes, taken in turns, with their CPU.

Also used by ``get_cpu.py`` and ``serve_get.py`` (the bytecode cache of their timed children).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import proc_cpu_seconds

CHILD = Path(__file__).resolve().with_name("client_child.py")
"""The timed child of the read scenarios (it imports only what it measures)."""


def children_cpu() -> float:
    """CPU seconds of this process's finished children so far (user + system)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


CPU_COLUMNS = ("get", "base", "tar", "tgz", "fill", "one", "nx-get", "nx-base", "nx-tar", "nx-tgz")
SERVER_PID: list[int] = []
"""The server processes (the engine's, nginx's): their CPU is added to every run's (an idle
server uses next to none)."""
CPU: dict[str, list[float]] = {}
"""Per run label: the CPU seconds of its processes (client side + the server), filled by
:func:`interleaved`: less sensitive to other load on the machine than wall time."""


def timed(cmd: list[str], **kw: object) -> float:
    """Wall-clock seconds of a command (which must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def child(mode: str, *args: str) -> dict[str, float]:
    """Run a mode of ``client_child.py`` in a fresh process; its JSON figures plus the wall time."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(CHILD), mode, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - t0
    return figures


def use_bytecode_cache(prefix: Path, *more: Path) -> None:
    """Let every child process load compiled bytecode, as an installed package does.

    These machines set ``PYTHONDONTWRITEBYTECODE`` and the source tree has no ``__pycache__``, so
    each timed child would otherwise compile every module it imports (~50 ms for the client).
    The cache goes to ``prefix`` (``PYTHONPYCACHEPREFIX``) and is filled before any timed run.
    """
    import compileall

    import rcds

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False
    compileall.compile_dir(os.path.dirname(rcds.__file__), quiet=1)
    compileall.compile_file(CHILD, quiet=1)
    for src in more:  # other rcds source trees (--base-src)
        compileall.compile_dir(src, quiet=1)


def interleaved(
    n: int, sync: bool, before: Callable[[str], object] | None = None, **runs: Callable[[], float]
) -> dict[str, list[float]]:
    """``n`` rounds of every run in turn (A B C, A B C, ...): a drift of the machine (DAMON
    eviction, other load) falls on all of them alike, not on one block. Before each run the
    page cache is written back (``sync``, not timed), so that no run pays for the writes of the
    one before it (a tarball run leaves ~300 MB of dirty pages); ``--no-sync`` leaves that out.
    ``before(name)`` is called (not timed) right before run ``name``, after the ``sync``."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n):
        for name, fn in runs.items():
            if sync:
                os.sync()
            if before is not None:
                before(name)
            c0, s0 = children_cpu(), sum(proc_cpu_seconds(pid) for pid in SERVER_PID)
            times[name].append(fn())
            cpu = children_cpu() - c0 + sum(proc_cpu_seconds(pid) for pid in SERVER_PID) - s0
            CPU.setdefault(name, []).append(cpu)
    return times


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f})"
