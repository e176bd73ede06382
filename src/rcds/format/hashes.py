"""Content hashes: algorithms, hash strings, object-type suffixes and object paths.

A CernVM-FS content hash is a digest over the *stored* (usually zlib-compressed) bytes.
Its textual form ("hash string") is lowercase hex followed by an algorithm identifier
(nothing for SHA-1, ``-rmd160``, ``-shake128``). Objects live at
``data/<2 hex>/<38 hex><algorithm id><type suffix>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from enum import Enum
from typing import Any, NamedTuple, Protocol, Self

from rcds.errors import IntegrityError


class Hasher(Protocol):
    """The part of a hashlib object rcds uses."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Hash ``data`` after what came before."""


class Algorithm(Enum):
    """Content-hash algorithms of CernVM-FS (``shash::Algorithms``; MD5 is only for paths)."""

    SHA1 = "sha1"
    RMD160 = "rmd160"
    SHAKE128 = "shake128"

    __hash__ = object.__hash__  # members are singletons compared by identity: hash them by it (C speed)

    @property
    def identifier(self) -> str:
        """The text appended to the hex digest in hash strings and object names."""
        return _IDENTIFIER[self]

    @property
    def flag_value(self) -> int:
        """The value stored in catalog flag bits 8-10 (the enum value minus one)."""
        return _FLAG_VALUE[self]

    @classmethod
    def from_flag_value(cls, value: int) -> Algorithm:
        """The algorithm encoded in catalog flag bits 8-10."""
        for algo, v in _FLAG_VALUE.items():
            if v == value:
                return algo
        raise IntegrityError(f"unknown content hash algorithm number {value} in catalog flags")

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        """Parse a configuration name (``sha1``, ``rmd160``, ``shake128``)."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            raise IntegrityError(
                f"unknown hash algorithm {name!r}; use one of sha1, rmd160, shake128"
            ) from None

    def new(self) -> HashState:
        """A fresh incremental hash state."""
        return HashState(self)


_IDENTIFIER = {Algorithm.SHA1: "", Algorithm.RMD160: "-rmd160", Algorithm.SHAKE128: "-shake128"}
_FLAG_VALUE = {Algorithm.SHA1: 0, Algorithm.RMD160: 1, Algorithm.SHAKE128: 2}
_BY_LENGTH = {40: Algorithm.SHA1, 47: Algorithm.RMD160, 49: Algorithm.SHAKE128}
DIGEST_SIZE = 20
_HEX40 = re.compile(r"[0-9a-f]{40}")


class HashState:
    """Incremental hashing with the algorithm's CernVM-FS semantics (SHAKE-128 gives 160 bits)."""

    __slots__ = ("_h", "algorithm")

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        if algorithm is Algorithm.SHA1:
            self._h: hashlib._Hash = hashlib.sha1()
        elif algorithm is Algorithm.RMD160:
            self._h = hashlib.new("ripemd160")
        else:
            self._h = hashlib.shake_128()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes."""
        self._h.update(data)

    def finish(self) -> ContentHash:
        """The content hash of everything fed so far."""
        shake = self.algorithm is Algorithm.SHAKE128
        digest = self._h.digest(DIGEST_SIZE) if shake else self._h.digest()  # type: ignore[call-arg]
        return ContentHash(self.algorithm, digest)


class ObjectKind(Enum):
    """Object-type suffixes appended to object file names."""

    FILE = ""
    PARTIAL = "P"
    CATALOG = "C"
    HISTORY = "H"
    CERTIFICATE = "X"
    METAINFO = "M"

    __hash__ = object.__hash__  # as for Algorithm: kinds are dictionary keys on every object's path


class _ContentHashFields(NamedTuple):
    algorithm: Algorithm
    digest: bytes


_TUPLE_NEW = tuple.__new__


class ContentHash(_ContentHashFields):
    """A content hash: algorithm plus raw 20-byte digest.

    An immutable record (a :class:`~typing.NamedTuple`: hashable, picklable, cheap to make);
    building one checks the digest length.
    """

    __slots__ = ()

    def __new__(cls, algorithm: Algorithm, digest: bytes) -> ContentHash:
        """A content hash; IntegrityError if ``digest`` is not :data:`DIGEST_SIZE` bytes."""
        if len(digest) != DIGEST_SIZE:
            raise IntegrityError(f"a content digest has {DIGEST_SIZE} bytes, not {len(digest)}")
        return _TUPLE_NEW(cls, (algorithm, digest))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy: no classmethod
        return cls(*iterable)  # _replace builds through here: keep the length check

    @property
    def hex(self) -> str:
        """The hash string: lowercase hex digest plus algorithm identifier."""
        return self.digest.hex() + self.algorithm.identifier

    def __str__(self) -> str:
        return self.hex

    @classmethod
    def parse(cls, text: str) -> ContentHash:
        """Parse a hash string; the algorithm is decided by its length, as stock does."""
        algo = _BY_LENGTH.get(len(text))
        if algo is None or not text.endswith(algo.identifier) or not _HEX40.fullmatch(text[:40]):
            raise IntegrityError(f"{text!r} is not a content hash string")
        return cls(algo, bytes.fromhex(text[:40]))

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, algorithm: Algorithm = Algorithm.SHA1) -> ContentHash:
        """Hash a whole buffer."""
        state = HashState(algorithm)
        state.update(data)
        return state.finish()

    def object_name(self, kind: ObjectKind = ObjectKind.FILE) -> str:
        """The object's path relative to the repository root: ``data/ab/cdef...<id><suffix>``."""
        h = self.digest.hex()
        algo = self.algorithm
        ident = "" if algo is Algorithm.SHA1 else _IDENTIFIER[algo]
        return f"data/{h[:2]}/{h[2:]}{ident}{kind._value_}"  # _value_: no enum property call per object

    def is_null(self) -> bool:
        """True for the all-zero digest stock writes as 'no previous revision'."""
        return self.digest == bytes(DIGEST_SIZE)


_OBJECT_NAME = re.compile(r"data/([0-9a-f]{2})/([0-9a-f]{38})(-rmd160|-shake128)?([PCHXM]?)")


def parse_object_name(name: str) -> tuple[ContentHash, ObjectKind]:
    """Inverse of :meth:`ContentHash.object_name`; strict, so it also validates names."""
    m = _OBJECT_NAME.fullmatch(name)
    if m is None:
        raise IntegrityError(f"{name!r} is not an object name (data/xx/<38 hex>[-algo][suffix])")
    algo = _BY_LENGTH[40 + len(m.group(3) or "")]
    return ContentHash(algo, bytes.fromhex(m.group(1) + m.group(2))), ObjectKind(m.group(4))
