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
    never a part.
    """

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
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

    def sync(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable (default: nothing to do)."""
