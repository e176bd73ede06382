"""The worker's pipe ends speak the framing of ``multiprocessing`` connections (the parent's side)."""

from __future__ import annotations

import os
import threading
from multiprocessing.connection import Connection

import pytest

from rcds.client.get.pipes import Receiver, Sender


def test_messages_both_ways_small_and_large() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    parent_out, worker_in = Connection(w1, readable=False), Receiver(r1)
    worker_out, parent_in = Sender(w2), Connection(r2, writable=False)
    messages = [("ready",), (7, [(b"\x01" * 20, "", "", 5, True, ())]), {"x": b"y" * 300_000}]
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(worker_in.recv() for _ in messages))
    reader.start()  # the large one does not fit in the pipe: read while it is written
    for m in messages:
        parent_out.send(m)
    reader.join(10)
    assert got == messages
    sent: list[object] = []
    reader = threading.Thread(target=lambda: sent.extend(parent_in.recv() for _ in messages))
    reader.start()
    for m in messages:
        worker_out.send(m)
    reader.join(10)
    assert sent == messages
    parent_out.close()
    with pytest.raises(EOFError):
        worker_in.recv()
    for fd in (r1, w2):
        os.close(fd)
    parent_in.close()


def test_a_message_cut_short_is_end_of_file() -> None:
    r, w = os.pipe()
    os.write(w, b"\x00\x00\x00\x10abc")  # says 16 bytes, has 3
    os.close(w)
    with pytest.raises(EOFError):
        Receiver(r).recv()
    os.close(r)
