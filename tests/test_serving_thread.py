"""ServingThread: a coroutine served from a background thread, started, called, stopped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from rcds.errors import RcdsError
from rcds.serving_thread import ServingThread


def test_serves_until_stopped_and_runs_calls_on_its_loop() -> None:
    ended = threading.Event()

    async def serve(ready: Callable[[str], None], stop: asyncio.Event) -> None:
        ready("http://127.0.0.1:1")
        await stop.wait()
        ended.set()

    with ServingThread(serve, name="rcds-test-serving", what="the test server") as t:
        assert t.url == "http://127.0.0.1:1"
        assert t.call(lambda: threading.current_thread().name) == "rcds-test-serving"
        assert not ended.is_set()
    assert ended.is_set()
    assert "rcds-test-serving" not in {th.name for th in threading.enumerate()}
    t.stop()  # a second stop is harmless


def test_a_server_that_fails_to_start_is_reported_by_name() -> None:
    async def serve(ready: Callable[[str], None], stop: asyncio.Event) -> None:
        raise OSError("address already in use")

    with pytest.raises(RcdsError, match="the test server did not start: address already in use"):
        ServingThread(serve, name="rcds-test-serving", what="the test server")
