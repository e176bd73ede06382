"""The deflate libraries that may write a repository's objects, and the choice ``LIBRARY:LEVEL``.

Every library here writes an ordinary zlib stream (RFC 1950: header, deflate data, Adler-32), which
every CernVM-FS client and :func:`rcds.format.compression.decompress` inflate; only the bytes, and
so the object names (the hash of the compressed bytes), depend on the library and level. Measured
on a real ``pip install --target`` tree (docs/performance.md), one core:

* ``zlib`` (the standard library): the reference; level 6 is the stock cvmfs default.
* ``libdeflate`` (PyPI ``deflate``): whole-buffer compression, about 2.5x faster than zlib at the
  same level and slightly smaller output; levels 1-12. The ``rcds repo create`` default is 5: the
  size of zlib 6 at 3.2x its speed.
* ``isal`` (Intel ISA-L, PyPI ``isal``): levels 0-3, many times faster than zlib 1 for about the
  same size as zlib 1: the publishing service's default (time to visible matters more there).

zlib-ng (PyPI ``zlib-ng``) was measured too and left out: at every level it is slower than
libdeflate for the same size, or larger than ISA-L for the same time.

A library that cannot be imported (a platform without its wheel) is replaced by the standard
library's zlib at a comparable level: :func:`resolve` says so in its ``note``. The objects are
then still valid, only larger or slower to write, and do not deduplicate against objects of the
chosen library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

from rcds.errors import ConfigError

Buffer = bytes | bytearray | memoryview
Compress = Callable[[Buffer], bytes]
"""A whole-buffer compressor returning one complete zlib stream."""

__all__ = [
    "DEFAULT",
    "LIBRARIES",
    "Compress",
    "Compression",
    "Library",
    "Resolved",
    "resolve",
]


@dataclass(frozen=True)
class Library:
    """One deflate library: where it comes from, its levels and how to call it."""

    name: str
    module: str
    package: str
    levels: range
    bind: Callable[[ModuleType, int], Compress]
    fallback_level: Callable[[int], int]
    """The standard zlib level to use instead when the library cannot be imported."""


def _bind_zlib(mod: ModuleType, level: int) -> Compress:
    compress = mod.compress

    def run(data: Buffer) -> bytes:
        out: bytes = compress(data, level)
        return out

    return run


EMPTY_OBJECT = bytes.fromhex("789c030000000001")
"""The empty content as stock cvmfs (zlib) stores it: its name (``e8ec3d88...``) is well known,
e.g. of every ``.cvmfscatalog`` marker, so the other libraries store the empty content so too."""


def _bind_libdeflate(mod: ModuleType, level: int) -> Compress:
    compress = mod.zlib_compress

    def run(data: Buffer) -> bytes:
        return bytes(compress(data, level)) if len(data) else EMPTY_OBJECT  # it returns a bytearray

    return run


def _bind_isal(mod: ModuleType, level: int) -> Compress:
    compress = mod.compress

    def run(data: Buffer) -> bytes:
        out: bytes = compress(data, level) if len(data) else EMPTY_OBJECT
        return out

    return run


LIBRARIES: dict[str, Library] = {
    lib.name: lib
    for lib in (
        Library("zlib", "zlib", "(standard library)", range(1, 10), _bind_zlib, lambda n: n),
        Library("libdeflate", "deflate", "deflate", range(1, 13), _bind_libdeflate, lambda n: min(n, 9)),
        Library("isal", "isal.isal_zlib", "isal", range(0, 4), _bind_isal, lambda n: 1),
    )
}
"""The supported libraries, by the name used in ``LIBRARY:LEVEL``."""


@dataclass(frozen=True)
class Compression:
    """A repository's compressor: a library of :data:`LIBRARIES` and one of its levels."""

    library: str
    level: int

    @classmethod
    def parse(cls, text: str) -> Compression:
        """``libdeflate:6`` (or ``zlib:1``, ``isal:2``); ConfigError if not valid."""
        name, sep, level_text = str(text).strip().partition(":")
        choices = ", ".join(f"{n}:{lib.levels[0]}-{lib.levels[-1]}" for n, lib in LIBRARIES.items())
        lib = LIBRARIES.get(name.strip().lower())
        if not sep or lib is None:
            raise ConfigError(f"compression {text!r}: give LIBRARY:LEVEL, one of {choices}")
        try:
            level = int(level_text)
        except ValueError:
            raise ConfigError(f"compression {text!r}: the level must be a number ({choices})") from None
        if level not in lib.levels:
            raise ConfigError(f"compression {text!r}: {lib.name} levels are {lib.levels[0]}-{lib.levels[-1]}")
        return cls(lib.name, level)

    def __str__(self) -> str:
        return f"{self.library}:{self.level}"

    @property
    def spec(self) -> Library:
        """The library's entry in :data:`LIBRARIES`."""
        return LIBRARIES[self.library]

    def compressor(self) -> Compress:
        """The compress function; ImportError if the library is not installed."""
        return _compressor(self.library, self.level)


DEFAULT = Compression("libdeflate", 5)
"""The default of ``rcds repo create``: the size of zlib 6 (within 0.3%) in 0.31 of its compression
CPU time; libdeflate 6 would be 0.8% smaller for 25% more CPU (docs/performance.md)."""

_cache: dict[tuple[str, int], Compress] = {}


def _compressor(library: str, level: int) -> Compress:
    found = _cache.get((library, level))
    if found is None:
        lib = LIBRARIES[library]
        found = _cache[(library, level)] = lib.bind(importlib.import_module(lib.module), level)
    return found


class Resolved(NamedTuple):
    """What :func:`resolve` found: the compression actually used and, after a fallback, why."""

    compression: Compression
    compress: Compress
    note: str | None


def resolve(wanted: Compression) -> Resolved:
    """The compressor for ``wanted``, or the standard library's zlib if its library is missing."""
    try:
        return Resolved(wanted, wanted.compressor(), None)
    except ImportError as exc:
        lib = wanted.spec
        used = Compression("zlib", lib.fallback_level(wanted.level))
        note = (
            f"compression {wanted} needs the Python package {lib.package!r}, which cannot be imported"
            f" ({exc}); new objects are written with {used} instead (valid for every client, but"
            f" larger or slower to write): install it with 'pip install {lib.package}'"
        )
        return Resolved(used, _compressor(used.library, used.level), note)
