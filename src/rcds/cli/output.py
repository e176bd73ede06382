"""Small text-formatting helpers for command output."""

from __future__ import annotations

from collections.abc import Sequence


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def print_kv(rows: Sequence[tuple[str, str]]) -> None:
    """Print aligned ``key: value`` lines."""
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")
