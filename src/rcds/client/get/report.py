"""What ``rcds get`` reports: progress counters while it copies, and a summary at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GetReport", "Progress"]


@dataclass(slots=True)
class Progress:
    """Counters passed to the progress callback."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class GetReport:
    """What :func:`materialize` did."""

    target: Path
    revision: int
    files: int
    directories: int
    symlinks: int
    hardlinks: int
    bytes: int
    skipped: int
    special_skipped: int
    seconds: float
