"""Shared checks of the server tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


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
