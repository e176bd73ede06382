"""The storage backend interface: a flat namespace of strictly named, atomically written files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class Store(ABC):
    """Where a repository's served files live.

    Names are root files (``.cvmfspublished``...) or objects (``data/xx/...``), see
    :mod:`rcds.storage.names`. Every write is atomic: a reader sees the old content or the new,
    never a part. Implementations: :class:`rcds.storage.local.LocalStore` (a directory) and
    :class:`rcds.storage.s3.S3Store` (an S3 bucket); :func:`rcds.storage.locate.open_store`
    opens either from a location string.
    """

    #: where the store is, for messages (a directory or ``s3://bucket/prefix``); never a secret
    location: str = ""
    #: compress-and-store threads that keep this backend busy (network stores want many)
    parallelism: int = 2

    @abstractmethod
    def put(self, name: str, data: bytes | memoryview) -> None:
        """Write ``data`` under ``name`` atomically (replacing any old content)."""

    @abstractmethod
    def put_file(self, name: str, src: Path) -> None:
        """Move a complete local file into the store under ``name`` atomically."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """The content of ``name``; NotFoundError if absent."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A binary reader for ``name``; NotFoundError if absent."""

    @abstractmethod
    def has(self, name: str) -> bool:
        """True if ``name`` exists."""

    @abstractmethod
    def size(self, name: str) -> int:
        """Byte size of ``name``; NotFoundError if absent."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove ``name``; True if it existed."""

    @abstractmethod
    def list_objects(self) -> Iterator[str]:
        """Every object name (``data/xx/...``) in the store, in no particular order."""

    def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """Write an object unless it exists already (content addressed); True if written."""
        if self.has(name):
            return False
        self.put(name, bytes(data))
        return True

    def staging_dir(self) -> Path:
        """A local directory for files that :meth:`put_file` will take (same filesystem if local)."""
        raise NotImplementedError(f"{type(self).__name__} has no staging directory")

    def clean_temp(self) -> int:
        """Remove leftovers of interrupted writers; return how many (default: none to remove)."""
        return 0

    def sync(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable (default: nothing to do)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and local scratch space (default: nothing to release)."""
