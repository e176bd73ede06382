"""Verifying whole objects of known plain size in one call each: the hot path of ``rcds get``.

:func:`verify_sized` does what :func:`rcds.format.compression.verify_object` does (hash of the
stored bytes, inflate, exact plain size) for an object whose plain size the catalog gives, with
libdeflate's whole-buffer decompressor (PyPI ``deflate``): the output buffer is allocated once
at its final size and the stream inflated straight into it, ~1.4x faster than ISA-L's streaming
inflater on a real software tree (0.88 against 1.23 CPU seconds for its 12,400 objects, 478 MB)
and ~2.9x faster than zlib. libdeflate checks the Adler-32 trailer and refuses a truncated or
oversized stream; it ignores bytes after the stream, so the stream's end is checked here too (the
trailer must be the last four bytes: bytes after the stream that end with a copy of its trailer
would pass, with the stream's content; the stored bytes are authentic either way, their hash was
checked first). Anything it refuses goes through
:func:`~rcds.format.compression.inflate_checked`, which gives the precise error (or, should
libdeflate ever refuse a valid stream, the content). Without the ``deflate`` package the whole
path is :func:`~rcds.format.compression.verify_object`.
"""

from __future__ import annotations

from hashlib import sha1 as _sha1
from types import ModuleType

from rcds.format.compression import check_hash, inflate_checked
from rcds.format.hashes import Algorithm, ContentHash

_SHA1 = Algorithm.SHA1

_libdeflate: ModuleType | None
try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - a platform without its wheel
    _libdeflate = None

__all__ = ["verify_sized"]


def verify_sized(
    data: bytes | bytearray | memoryview,
    expected: ContentHash,
    size: int,
    *,
    compressed: bool = True,
    what: str = "object",
) -> bytes | bytearray:
    """The plain content (exactly ``size`` bytes) of stored bytes that hash to ``expected``.

    :class:`~rcds.errors.IntegrityError` as :func:`~rcds.format.compression.verify_object`
    for a wrong hash, a bad stream or a wrong size.
    """
    if expected.algorithm is not _SHA1 or _sha1(data).digest() != expected.digest:
        check_hash(data, expected, what)  # another algorithm (or the precise error)
    if not compressed or _libdeflate is None or size <= 0:
        return inflate_checked(data, compressed=compressed, size=size, what=what)
    try:
        out: bytearray = _libdeflate.zlib_decompress(data, size)
    except _libdeflate.DeflateError:
        return inflate_checked(data, compressed=True, size=size, what=what)
    if len(out) != size or int.from_bytes(data[-4:], "big") != _libdeflate.adler32(out):
        # short, or bytes after the stream (its Adler-32 trailer is not at the end): the precise error
        return inflate_checked(data, compressed=True, size=size, what=what)
    return out
