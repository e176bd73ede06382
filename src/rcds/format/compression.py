"""zlib object codec (RFC 1950 with header and Adler-32 trailer).

Stored objects are zlib streams; their content hash covers the compressed bytes, so the bytes
depend on the compressor a repository chose (:mod:`rcds.format.deflaters`; without a choice,
the standard library's zlib at level 6). Every stream is inflated with ISA-L
(:mod:`isal.isal_zlib`) when it is installed: the same streams, the same checks and errors,
about twice as fast.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash, HashState

if TYPE_CHECKING:  # the client imports this module: no dataclasses from deflaters at run time
    from rcds.format.deflaters import Compress

_inflater: ModuleType
try:
    from isal import isal_zlib as _inflater
except ImportError:  # pragma: no cover - a platform without its wheel: plain zlib
    _inflater = zlib
_ERRORS = (zlib.error, _inflater.error)

DEFAULT_LEVEL = 6


class StoredObject(NamedTuple):
    """Bytes ready to store under ``hash``; ``size`` is the uncompressed length."""

    hash: ContentHash
    data: bytes
    size: int


def compress(data: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress a whole buffer into one zlib stream."""
    return zlib.compress(data, level)


def make_object(
    data: bytes | bytearray | memoryview,
    algorithm: Algorithm = Algorithm.SHA1,
    compressor: Compress | None = None,
    compressed: bool = True,
) -> StoredObject:
    """Compress (unless ``compressed`` is false) and hash a buffer, as the publisher stores it.

    ``compressor``: the repository's (:func:`rcds.format.deflaters.resolve`); default zlib 6.
    """
    if not compressed:
        stored = bytes(data)
    elif compressor is None:
        stored = zlib.compress(data, DEFAULT_LEVEL)
    else:
        stored = compressor(data)
    return StoredObject(ContentHash.of(stored, algorithm), stored, len(data))


def decompress(data: bytes | bytearray | memoryview, limit: int | None = None, what: str = "object") -> bytes:
    """Inflate a complete zlib stream; raise IntegrityError if it is corrupt, truncated or too large."""
    d = _inflater.decompressobj()
    try:
        out: bytes = d.decompress(data, limit + 1 if limit is not None else 0)
    except _ERRORS as exc:
        raise IntegrityError(f"{what} is not a valid zlib stream ({exc})", what) from None
    if limit is not None and len(out) > limit:
        raise IntegrityError(f"{what} inflates beyond the expected {limit} bytes", what)
    if not d.eof:
        raise IntegrityError(f"{what} is a truncated zlib stream", what)
    if d.unused_data:
        raise IntegrityError(f"{what} has trailing bytes after its zlib stream", what)
    return out


def verify_object(
    data: bytes | bytearray | memoryview,
    expected: ContentHash,
    *,
    compressed: bool = True,
    size: int | None = None,
    what: str = "object",
) -> bytes:
    """Check the hash of stored bytes and return their decompressed content.

    ``size``, when given, is the exact uncompressed length the content must have.
    """
    check_hash(data, expected, what)
    return inflate_checked(data, compressed=compressed, size=size, what=what)


def check_hash(data: bytes | bytearray | memoryview, expected: ContentHash, what: str = "object") -> None:
    """Raise IntegrityError unless the stored bytes hash to ``expected`` (the first half of
    :func:`verify_object`: it proves the bytes authentic, so no other copy can be better)."""
    if hash_matches(data, expected):
        return
    found = ContentHash.of(data, expected.algorithm)
    raise IntegrityError(f"{what}: hash mismatch, expected {expected.hex}, found {found.hex}", what)


def hash_matches(data: bytes | bytearray | memoryview, expected: ContentHash) -> bool:
    """True if the stored bytes hash to ``expected``."""
    if expected.algorithm is Algorithm.SHA1:
        return hashlib.sha1(data).digest() == expected.digest
    return ContentHash.of(data, expected.algorithm) == expected


def inflate_checked(
    data: bytes | bytearray | memoryview,
    *,
    compressed: bool = True,
    size: int | None = None,
    what: str = "object",
) -> bytes:
    """The plain content of stored bytes whose hash was checked (the second half of
    :func:`verify_object`): inflated if ``compressed``, and exactly ``size`` bytes when given."""
    content = decompress(data, size, what) if compressed else bytes(data)
    if size is not None and len(content) != size:
        raise IntegrityError(f"{what}: size mismatch, expected {size} bytes, found {len(content)}", what)
    return content


class StreamVerifier:
    """Verify and inflate an object as it arrives, chunk by chunk (constant memory)."""

    def __init__(self, expected: ContentHash, *, compressed: bool = True, what: str = "object") -> None:
        self.expected = expected
        self.what = what
        self._hash: HashState = expected.algorithm.new()
        self._z = _inflater.decompressobj() if compressed else None
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        """Feed raw stored bytes; return the plain bytes they inflate to."""
        self._hash.update(data)
        if self._z is None:
            self.size += len(data)
            return data
        try:
            out: bytes = self._z.decompress(data)
        except _ERRORS as exc:
            raise IntegrityError(f"{self.what} is not a valid zlib stream ({exc})", self.what) from None
        self.size += len(out)
        return out

    def finish(self, size: int | None = None) -> None:
        """Check the hash, stream end and (if given) the uncompressed size."""
        found = self._hash.finish()
        if found != self.expected:
            raise IntegrityError(
                f"{self.what}: hash mismatch, expected {self.expected.hex}, found {found.hex}", self.what
            )
        if self._z is not None and (not self._z.eof or self._z.unused_data):
            raise IntegrityError(f"{self.what} is a truncated or padded zlib stream", self.what)
        if size is not None and self.size != size:
            raise IntegrityError(
                f"{self.what}: size mismatch, expected {size} bytes, found {self.size}", self.what
            )


def iter_decompress(chunks: Iterable[bytes], expected: ContentHash, what: str = "object") -> Iterator[bytes]:
    """Inflate a stream of stored chunks, verifying the hash at the end."""
    v = StreamVerifier(expected, what=what)
    for c in chunks:
        out = v.feed(c)
        if out:
            yield out
    v.finish()
