"""Servers run as child processes in tests and benches (Squid, nginx, Chromium, rcds itself): a free
port for one, waiting until it listens, and stopping it without hanging. Nothing here is used at
run time."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[Any], port: int, timeout: float) -> bool:
    """Wait until something accepts TCP connections on ``127.0.0.1:port``: True then; False as soon
    as ``proc`` exits, or when ``timeout`` seconds have passed (``proc.poll()`` tells which)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM ``proc`` and wait for it; SIGKILL it if it still runs after ``grace`` seconds. Reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
