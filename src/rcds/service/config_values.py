"""Value parsers shared by the service configuration: sizes and directory names (repository
names: :mod:`rcds.format.names`)."""

from __future__ import annotations

import math
import re

__all__ = ["DIRNAME_RE", "parse_size"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
DIRNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def parse_size(value: int | str) -> int:
    """Turn ``4294967296``, ``"4GiB"``, ``"4 GiB"``, ``"4G"`` or ``"1.5GB"`` into bytes.

    ``K``/``M``/``G``/``T`` and ``KiB``..``TiB`` are powers of 1024, ``KB``..``TB`` powers of
    1000; units are case-insensitive.  Raises :class:`ValueError` for anything else or a
    size below one byte.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '4GiB'")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size such as 4294967296, '4GiB' or '500MB'")
        size = math.floor(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    return size
