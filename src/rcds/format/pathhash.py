"""MD5 path hashing of catalog rows (``md5path_1/2``, ``parent_1/2``).

Catalog paths are repository-absolute with a leading ``/`` and no trailing slash; the
repository root is the empty string. The 16-byte MD5 is split into two signed
little-endian 64-bit integers.
"""

from __future__ import annotations

import hashlib
import struct

try:  # CPython's own MD5 is about twice as fast as OpenSSL's on short inputs (no EVP set-up)
    from _md5 import md5 as _md5  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - a Python built without its own hash modules
    _md5 = hashlib.md5

PathHash = tuple[int, int]

NULL_PATH_HASH: PathHash = (0, 0)
"""Parent hash of the repository root entry."""

_SPLIT = struct.Struct("<qq")
_unpack = _SPLIT.unpack


def md5_pair(path: str | bytes) -> PathHash:
    """The (md5path_1, md5path_2) pair of a catalog path."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    pair: PathHash = _unpack(_md5(raw).digest())
    return pair


def parent_path(path: str) -> str:
    """The parent of a catalog path; the parent of ``/a`` is the root ``""``."""
    if not path:
        raise ValueError("the repository root has no parent path")
    return path[: path.rfind("/")]


def parent_pair(path: str) -> PathHash:
    """The (parent_1, parent_2) pair of a catalog path (``(0, 0)`` for the root)."""
    return NULL_PATH_HASH if not path else md5_pair(parent_path(path))


def join(parent: str, name: str) -> str:
    """Join a catalog path and a basename."""
    return f"{parent}/{name}"
