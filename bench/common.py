"""Small helpers shared by the bench scripts: units, memory figures, machine description, tables."""

from __future__ import annotations

import io
import os
import platform
import time
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

MB = 1_000_000  # throughput and sizes are reported in decimal megabytes
KiB = 1 << 10
MiB = 1 << 20


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Decimal megabytes per second (0 when nothing was timed)."""
    return nbytes / seconds / MB if seconds > 0 else 0.0


def proc_status_kib(field: str, pid: str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``: peak RSS, ``VmRSS``: current RSS), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (``[0]`` is the state, ``[1]`` the
    parent's pid, ``[11:15]`` utime, stime, cutime, cstime in clock ticks), or [] if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def proc_user_system(pid: int | str) -> tuple[float, float]:
    """User and system CPU seconds a live process has used so far (all its threads), or 0s if gone."""
    fields = proc_stat_fields(pid)
    if not fields:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds a live process has used so far (all its threads), or 0 if gone."""
    return sum(proc_user_system(pid))


def machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine so far (all processes, from ``/proc/stat``), or 0."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line describing where a bench ran."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {mem:.0f} GiB RAM, Python {platform.python_version()}, "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}, {platform.system()} {platform.release()}"
    )


class DeflateSink(io.RawIOBase):
    """A write-only stream that deflates what it is given with ``compressor`` (a ``compressobj`` of
    zlib or a library like it; wbits 31 makes gzip) into the file ``out``. ``written`` counts the
    compressed bytes so far; :meth:`finish` writes the end of the stream."""

    def __init__(self, out: BinaryIO, compressor: Any) -> None:
        super().__init__()
        self.out = out
        self.compressor = compressor
        self.written = 0

    def writable(self) -> bool:
        """True: this is a writable stream."""
        return True

    def write(self, b: Any) -> int:
        """Deflate ``b`` into the file; all of it is taken."""
        data = self.compressor.compress(bytes(b))
        self.out.write(data)
        self.written += len(data)
        return len(b)

    def finish(self) -> None:
        """Write the rest of the compressed stream."""
        tail = self.compressor.flush()
        self.out.write(tail)
        self.written += len(tail)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """Rows as an aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    sep = (
        "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        if markdown
        else "  ".join("-" * w for w in widths)
    )
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def wait_idle(limit: float, threshold: float = 0.3, window: float = 3.0) -> None:
    """Wait (at most ``limit`` seconds) until other processes use less than ``threshold`` cores
    (the caller is idle meanwhile, so that is everybody else)."""
    deadline = time.monotonic() + limit
    other = 0.0
    while time.monotonic() < deadline:
        b0 = machine_busy_seconds()
        time.sleep(window)
        other = (machine_busy_seconds() - b0) / window
        if other < threshold:
            return
    if limit > 0:
        print(f"  (the machine stayed busy: other processes use {other:.1f} cores; measuring anyway)")
