"""The lean HTTP/1.1 connection over TLS: what it receives is the plain text, never the records."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from rcds.net.http1 import Connection

from testkit import self_signed

pytestmark = pytest.mark.timeout(60)


def test_a_tls_socket_is_received_through_tls_not_its_descriptor(tmp_path: Path) -> None:
    """The fast receive reads a plain socket's descriptor directly; a TLS socket's descriptor
    carries encrypted records, so a TLS connection must always receive through the socket."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    client_ctx.check_hostname = False
    listener = socket.create_server(("127.0.0.1", 0))
    payload = b"plain text through TLS\n" * 200

    def serve() -> None:
        raw, _ = listener.accept()
        with server_ctx.wrap_socket(raw, server_side=True) as tls:
            tls.sendall(payload)
            tls.recv(1)  # until the client closes

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        raw = socket.create_connection(listener.getsockname(), timeout=5)
        tls = client_ctx.wrap_socket(raw)
        conn = Connection(tls, proxied=False)
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < len(payload) and time.monotonic() < deadline:
            time.sleep(0.01)  # let the records arrive, so that a descriptor read would find them
            got += conn.recv()
        tls.close()
        assert got == payload
    finally:
        t.join(5)
        listener.close()
