"""Shared checks of the server tests."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: At most this many renames per flipping writer (a bound, should a test forget to stop it).
MAX_FLIPS = 100_000


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test may make the server (or asyncio under it) log an error, up to its own stop."""
    yield
    records = caplog.get_records("call") + caplog.records  # the latter: this teardown so far
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture(params=["openat2", "proc-fd", "realpath"])
def open_strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way the server may open files: openat2 without links (then the /proc/self/fd check
    for paths with links), the /proc/self/fd check alone, and realpath where /proc is missing."""
    from rcds.serve import handler, openat2

    if request.param != "openat2":
        monkeypatch.setattr(openat2, "_syscall", None)
    if request.param == "realpath":
        monkeypatch.setattr(handler, "_PROC_FD", False)
    return str(request.param)


@contextlib.contextmanager
def _flipping(repo: Path, versions: list[bytes]) -> Iterator[None]:
    """Replace ``repo/.cvmfspublished`` by each of ``versions`` in turn, by atomic rename, in a
    thread, until the block ends (as a publisher does while clients read)."""
    target = repo / ".cvmfspublished"
    target.write_bytes(versions[0])
    done = threading.Event()

    def writer() -> None:
        i = 0
        while not done.is_set() and i < MAX_FLIPS:
            i += 1
            tmp = repo / f"data/txn/manifest.{i}"
            tmp.write_bytes(versions[i % len(versions)])
            os.replace(tmp, target)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


@pytest.fixture
def flip_manifest() -> Callable[[Path, list[bytes]], contextlib.AbstractContextManager[None]]:
    """A context manager that keeps replacing the manifest while the block runs."""
    return _flipping
