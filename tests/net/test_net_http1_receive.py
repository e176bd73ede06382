"""The lean HTTP/1.1 connection's receives, over socket pairs and a loopback TCP connection: the
pipelined fast path (whole answers straight from the buffer), receives with and without a
timeout, and ``read_ready`` (what has arrived, without waiting)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from rcds.net.body import BodyLimits
from rcds.net.http1 import Connection

pytestmark = pytest.mark.timeout(60)


def test_buffered_ok_body_takes_only_whole_plain_successes() -> None:
    """The pipelined fast path: whole 200 answers straight from the buffer; anything else (another
    status, chunked, closing, a partial body, a doubled length) is left to the full parse."""

    def ok(body: bytes, extra: bytes = b"") -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: x\r\nContent-length: %d\r\n%s\r\n%s" % (
            len(body),
            extra,
            body,
        )

    a, b = socket.socketpair()
    with a, b:
        conn = Connection(a, proxied=False)
        b.sendall(ok(b"one") + ok(b"two", b"Connection: keep-alive\r\n") + ok(b"") + ok(b"big" * 10))
        conn.unread(conn.recv())
        assert conn.buffered_ok_body(None) == b"one"
        assert conn.buffered_ok_body(None) == b"two"
        assert conn.buffered_ok_body(None) == b""
        assert conn.buffered_ok_body(29) is None  # over max_size: the full path reports it
        assert conn.served == 3
        head = conn.read_head(1.0)  # the rest of the buffer is intact for the full path
        parts: list[bytes] = []
        conn.read_body(head, parts.append, BodyLimits(1.0, 0, None))
        assert (head.status, b"".join(parts)) == (200, b"big" * 10)
        for wire in (
            ok(b"x", b"Connection: close\r\n"),
            ok(b"x", b"Transfer-Encoding: chunked\r\n"),
            ok(b"x", b"Content-Length: 1\r\n"),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            ok(b"xyz")[:-1],
        ):
            conn.take()
            conn.unread(wire)
            assert conn.buffered_ok_body(None) is None, wire
            assert conn.take() == wire  # nothing consumed


def test_receives_read_what_is_there_and_wait_only_up_to_the_timeout() -> None:
    """A socket with a timeout: bytes already there come without waiting, none within the timeout
    is ``TimeoutError``, end of file is b"" (and stays so); a blocking socket is read as usual."""
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.2)
        conn = Connection(a, proxied=False)
        b.sendall(b"abc")
        assert conn.recv() == b"abc"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv()
        assert time.monotonic() - start >= 0.15
        b.shutdown(socket.SHUT_WR)
        assert conn.recv() == b"" and conn.recv() == b""
    a, b = socket.socketpair()
    with a, b:
        conn = Connection(a, proxied=False)  # blocking: plain receives
        b.sendall(b"xyz")
        assert conn.recv() == b"xyz"
        conn.close()
        with pytest.raises(OSError):
            conn.recv()  # never a read of a descriptor number that may belong to another file now


def test_read_ready_adds_only_what_has_arrived_and_keeps_errors_for_the_next_receive() -> None:
    """The pipelined path asks for more of a partial answer without waiting: nothing there, end of
    file or a full buffer add nothing; a reset is raised by the next receive (the full parse)."""

    def ok(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5.0)
        conn = Connection(a, proxied=False)
        wire = ok(b"first") + ok(b"second")
        b.sendall(wire[:30])
        conn.unread(conn.recv())
        assert conn.buffered_ok_body(None) is None  # partial
        assert not conn.read_ready()  # nothing more yet: no wait
        b.sendall(wire[30:])
        time.sleep(0.05)
        assert conn.read_ready()
        assert conn.buffered_ok_body(None) == b"first"
        assert conn.buffered_ok_body(None) == b"second"
        conn.chunk = 4
        b.sendall(b"HTTP/1.1")
        time.sleep(0.05)
        assert conn.read_ready() and not conn.read_ready()  # 4 bytes buffered, chunk 4: no more
        assert conn.take() == b"HTTP"
        b.shutdown(socket.SHUT_WR)
        assert conn.read_ready()  # the rest
        assert conn.take() == b"/1.1"
        time.sleep(0.05)
        assert not conn.read_ready()  # end of file: nothing added, and the next receive sees it
        assert conn.recv() == b""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5.0)
        peer, _ = server.accept()
        with client, peer:
            conn = Connection(client, proxied=False)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # closed with linger 0: a reset
            time.sleep(0.05)
            assert not conn.read_ready()
            with pytest.raises(ConnectionResetError):
                conn.recv()  # the error read_ready met
