"""Kept file objects (rcds.mount.reading): a handle dropped while a read waits for its object.

The race (the bound on kept files drops a handle while one of its reads waits for a prefetched
object outside the handle's lock) cannot be timed with a real mount, so the file and the wait
are stand-ins here: the file is a real file object over bytes, the wait blocks until the test
has dropped the handle.
"""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from rcds.mount.reading import DroppedError, Handle, OpenFiles


class _File(io.BytesIO):
    """A file whose one object is never open (so a read waits for the prefetcher)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.compressed = True

    def piece_at(self, offset: int) -> tuple[object, bool] | None:
        return (SimpleNamespace(end=self.size), False) if offset < self.size else None


class _Mount:
    def __init__(self) -> None:
        self.open_files = 0
        self.waiting = threading.Event()
        self.go = threading.Event()
        self.read_ahead_calls = 0

    def wait_prefetched(self, piece: object, compressed: bool = True) -> None:
        self.waiting.set()
        assert self.go.wait(10)

    def is_cached(self, piece: object) -> bool:
        return True

    def read_ahead(self, file: object, piece: object) -> None:
        self.read_ahead_calls += 1


def _handle(data: bytes, mount: _Mount) -> Handle:
    return Handle(_File(data), mount)  # type: ignore[arg-type]


def test_a_handle_dropped_during_a_read_closes_after_it() -> None:
    mount = _Mount()
    files = OpenFiles(limit=1)
    h = files.add(1, _File(b"old content"), mount)  # type: ignore[arg-type]
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(h.read(0, 3)))
    reader.start()
    assert mount.waiting.wait(10)
    files.add(2, _File(b"other"), mount)  # type: ignore[arg-type]  # pushes inode 1 out
    assert files.get(1) is None
    assert not h.file.closed  # the read in progress keeps it open
    mount.go.set()
    reader.join(10)
    assert got == [b"old"]
    assert h.file.closed  # and the last reader closed it
    assert mount.open_files == 1
    assert mount.read_ahead_calls == 1


def test_a_closed_handle_asks_to_be_opened_again() -> None:
    mount = _Mount()
    mount.go.set()
    h = _handle(b"content", mount)
    h.close()
    assert h.file.closed
    with pytest.raises(DroppedError):
        h.read(0, 3)
    assert h.read_if_local(0, 3) is None
