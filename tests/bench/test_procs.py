"""``bench/procs.py``: the child processes of a process, whichever thread started them, and their CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import procs

BUSY = """
import sys, time
end = time.process_time() + 0.2
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.read()
"""
"""A child that uses 0.2 CPU-s, says so, and lives until its standard input is closed."""


def test_children_started_by_any_thread_are_listed_with_their_cpu() -> None:
    started: list[subprocess.Popen[str]] = []

    def start() -> None:
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        )

    start()  # by the main thread
    t = threading.Thread(target=start)  # by another thread: listed in that thread's children file
    t.start()
    t.join()
    try:
        for p in started:
            assert p.stdout is not None and p.stdout.readline() == "done\n"  # each has used >= 0.2 CPU-s
        pids = procs.children(os.getpid())
        assert {p.pid for p in started} <= set(pids)
        assert os.getpid() in procs.tasks(os.getpid())
        assert procs.cpu_seconds(p.pid for p in started) >= 0.3
    finally:
        for p in started:
            p.communicate("")
    deadline = time.monotonic() + 5
    while set(procs.children(os.getpid())) & {p.pid for p in started} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(procs.children(os.getpid())) & {p.pid for p in started}  # reaped: no longer listed
    assert procs.cpu_seconds(p.pid for p in started) == 0.0  # gone: counted as nothing


def test_a_process_that_is_gone_has_no_tasks_or_children() -> None:
    p = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    gone = int(p.stdout)
    assert procs.tasks(gone) == [] and procs.children(gone) == []
