"""The moving parts of bench/e2e.py: processes with watched output, broker listeners, tarball variants."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
from common import DeflateSink, proc_stat_fields
from isal import isal_zlib

from rcds.format import manifest as manifest_fmt
from rcds.net.notify_stream import Subscription
from rcds.testing.processes import stop_process


class Proc:
    """A child process whose merged output is kept (and copied to ``log``) and can be waited on."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.time()
            self.log.write(line)
            self.log.flush()
            with self.cond:
                self.lines.append((t, line.rstrip("\n")))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first output line from index ``start`` on matching ``pattern``; RuntimeError on timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i][1])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise RuntimeError(f"no line matching {pattern!r} within {timeout:g} s:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def mark(self) -> int:
        """The index of the next line (for :meth:`wait_for`)."""
        with self.cond:
            return len(self.lines)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        stop_process(self.proc, 20)
        self.log.close()


class Announcements:
    """When a broker first announced each revision of a repository (wall clock), seen from here."""

    def __init__(self, server: str, fqrn: str) -> None:
        self.times: dict[int, float] = {}
        self.cond = threading.Condition()
        self.sub = Subscription(server, fqrn, backoff=(0.05, 0.5))
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for activity in self.sub:
            t = time.time()
            revision = manifest_fmt.parse(activity.manifest).manifest.revision
            with self.cond:
                self.times.setdefault(revision, t)
                self.cond.notify_all()

    def first_at_least(self, revision: int, timeout: float) -> float | None:
        """When the first revision >= ``revision`` was announced (waiting up to ``timeout`` s)."""

        def found() -> float | None:
            hits = [t for r, t in self.times.items() if r >= revision]
            return min(hits) if hits else None

        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def close(self) -> None:
        """Stop listening."""
        self.sub.close()


def tar_variant(base: Path, out: Path, key: int) -> tuple[int, str]:
    """A copy of the tar.gz ``base`` with every file's bytes XORed with ``key`` (1-255).

    Every object is new to the repositories (no deduplication against earlier rounds) while sizes
    and compressibility stay those of the base (XOR with a constant permutes byte values, so
    repeats stay repeats). Compressed with ISA-L level 3 (gzip), which is quick to make.
    Returns the compressed size and the first file's path in the tarball.
    """
    first = ""
    with open(out, "wb") as f:
        sink = DeflateSink(f, isal_zlib.compressobj(3, isal_zlib.DEFLATED, 31))
        with tarfile.open(base, "r|gz") as src, tarfile.open(fileobj=sink, mode="w|") as dst:
            for ti in src:
                data = src.extractfile(ti) if ti.isfile() else None
                if data is None:
                    dst.addfile(ti)
                    continue
                raw = np.frombuffer(data.read(), dtype=np.uint8) ^ np.uint8(key)
                first = first or ti.name
                dst.addfile(ti, io.BytesIO(raw.tobytes()))
        sink.finish()
    return sink.written, first


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation; with 5 values p95 lies between the two largest)."""
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and all its live descendants (and their reaped
    children), from ``/proc``: the part of the machine this chain used, whatever else runs."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        fields = proc_stat_fields(entry) if entry.isdigit() else []
        if not fields:
            continue
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total = 0
    for p, ticks in used.items():
        q = p
        while q > 1 and q != pid:
            q = parent.get(q, 0)
        if q == pid:
            total += ticks
    return total / tick
