"""Where a repository view reads from: a local store or an HTTP server, with every byte verified."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

from rcds.format.compression import verify_object
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.storage.base import Store

T = TypeVar("T")


class Source(ABC):
    """Fetches root files and objects; objects are checked against their content hash."""

    #: a short description for messages (a directory or a URL)
    location: str = ""

    @abstractmethod
    def root_file(self, name: str) -> bytes:
        """A root file such as ``.cvmfspublished`` (unverified: the caller checks signatures)."""

    @abstractmethod
    def fetch_checked(self, name: str, check: Callable[[bytes], T]) -> T:
        """Fetch an object and return ``check(raw)``; ``check`` raises IntegrityError on bad data."""

    def object(
        self,
        h: ContentHash,
        kind: ObjectKind = ObjectKind.FILE,
        *,
        size: int | None = None,
        compressed: bool = True,
    ) -> bytes:
        """An object's verified, decompressed content (``size`` = expected uncompressed size)."""
        name = h.object_name(kind)
        return self.fetch_checked(
            name, lambda raw: verify_object(raw, h, compressed=compressed, size=size, what=name)
        )

    def raw_object(self, h: ContentHash, kind: ObjectKind = ObjectKind.FILE) -> bytes:
        """An object's stored bytes, hash-verified but not decompressed (for replication)."""
        name = h.object_name(kind)

        def check(raw: bytes) -> bytes:
            verify_object(raw, h, compressed=False, what=name)
            return raw

        return self.fetch_checked(name, check)


class StoreSource(Source):
    """Read a repository from a :class:`~rcds.storage.base.Store` (a local directory)."""

    def __init__(self, store: Store, location: str = "") -> None:
        self.store = store
        self.location = location or str(getattr(store, "root", "store"))

    def root_file(self, name: str) -> bytes:
        """Read a root file from the store."""
        return self.store.get(name)

    def fetch_checked(self, name: str, check: Callable[[bytes], T]) -> T:
        """Read and check an object."""
        return check(self.store.get(name))
