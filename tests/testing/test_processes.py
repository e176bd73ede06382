"""Child servers of tests and benches: waiting until one listens, stopping one that ignores SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from rcds.testing.processes import free_port, stop_process, wait_listening

LISTEN = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "stubborn" else signal.SIG_DFL)
time.sleep(0.3)
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
time.sleep(60)
"""


def test_waits_until_the_child_listens_and_stops_it() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", LISTEN, str(port), "polite"], stdout=subprocess.PIPE)
    try:
        assert wait_listening(proc, port, 30)
        stop_process(proc)
        assert proc.returncode == -signal.SIGTERM
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", LISTEN, str(port), "stubborn"])
    try:
        assert wait_listening(proc, port, 30)
        t0 = time.monotonic()
        stop_process(proc, grace=0.5)
        assert proc.returncode == -signal.SIGKILL
        assert time.monotonic() - t0 < 10
    finally:
        stop_process(proc)


def test_a_child_that_exits_is_not_waited_for_until_the_timeout() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    t0 = time.monotonic()
    assert not wait_listening(proc, free_port(), 60)
    assert time.monotonic() - t0 < 30 and proc.returncode == 3
