"""A real TLS server on 127.0.0.1 gets the client's proxy chain and its end-entity DN."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.errors import AuthError
from rcds.service.auth.tls import authenticate_peer, client_context, peer_chain, server_context
from rcds.service.auth.x509 import TrustStore

import pki

ALICE = "/DC=org/DC=example/O=Test/CN=Alice Smith"


@pytest.fixture(scope="module")
def server_files(tmp_path_factory: pytest.TempPathFactory, ca: pki.CA) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    host = ca.issue("/DC=org/DC=example/CN=localhost", server=True, sans=["localhost", "127.0.0.1"])
    cert, key = host.write(d, "hostcert")
    ca_file = d / "ca.pem"
    ca_file.write_bytes(pki.cert_pem(ca.cert))
    return cert, key, ca_file


class OneShotServer:
    """Accepts TLS connections on 127.0.0.1 and answers each with the client's DN or error."""

    def __init__(self, ctx: ssl.SSLContext, trust: TrustStore) -> None:
        self.ctx, self.trust = ctx, trust
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.port = self.sock.getsockname()[1]
        self.results: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    try:
                        answer = "DN " + authenticate_peer(conn, self.trust).dn
                    except AuthError as e:
                        answer = f"{e.status} {e}"
                    self.results.append(answer)
                    conn.sendall(answer.encode() + b"\n")
            except (ssl.SSLError, OSError) as e:
                self.results.append(f"handshake failed: {e}")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def server(server_files: tuple[Path, Path, Path], trust: TrustStore) -> Iterator[OneShotServer]:
    cert, key, _ = server_files
    srv = OneShotServer(server_context(cert, key, trust), trust)
    yield srv
    srv.close()


def ask(port: int, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        return conn.makefile("rb").readline().decode().strip()


def client(tmp_path: Path, cred: pki.Credential | None, ca_file: Path) -> ssl.SSLContext:
    if cred is None:
        return client_context(ca_file=ca_file)
    cert, key = cred.write(tmp_path, "usercred")  # like an X509_USER_PROXY file: proxy, then its chain
    return client_context(cert, key, ca_file=ca_file)


def test_rfc_proxy_chain_gives_end_entity_dn(
    tmp_path: Path, server: OneShotServer, server_files: tuple[Path, Path, Path], alice: pki.Credential
) -> None:
    proxy = pki.proxy(pki.proxy(alice))
    assert ask(server.port, client(tmp_path, proxy, server_files[2])) == f"DN {ALICE}"


def test_plain_certificate_and_intermediate(
    tmp_path: Path, server: OneShotServer, server_files: tuple[Path, Path, Path], ca: pki.CA
) -> None:
    inter = ca.intermediate("/DC=org/DC=example/CN=TLS Issuing CA")
    bob = inter.issue("/DC=org/DC=example/O=Test/CN=Bob")
    assert ask(server.port, client(tmp_path, bob, server_files[2])) == "DN /DC=org/DC=example/O=Test/CN=Bob"
    assert (
        ask(server.port, client(tmp_path, pki.proxy(bob), server_files[2]))
        == "DN /DC=org/DC=example/O=Test/CN=Bob"
    )


def test_no_client_certificate_is_allowed_by_tls(
    tmp_path: Path, server: OneShotServer, server_files: tuple[Path, Path, Path]
) -> None:
    # Token clients present no certificate: the handshake succeeds, authentication says 401.
    assert ask(server.port, client(tmp_path, None, server_files[2])) == "401 no client certificate presented"


def test_untrusted_and_bad_chains_fail_the_handshake(
    tmp_path: Path,
    server: OneShotServer,
    server_files: tuple[Path, Path, Path],
    alice: pki.Credential,
    other_ca: pki.CA,
) -> None:
    bad = [
        other_ca.issue(ALICE),  # wrong CA
        pki.proxy(alice, signing_key=pki.new_key()),  # proxy with a bad signature
        pki.proxy(
            alice, subject_name=pki.name("/DC=org/DC=example/O=Test/CN=Carol/CN=1")
        ),  # bad proxy subject
        pki.proxy(alice, style="legacy"),  # OpenSSL 3 knows no legacy proxies
    ]
    for i, cred in enumerate(bad):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ask(server.port, client(tmp_path / str(i), cred, server_files[2]))
    server.close()
    assert len(server.results) == len(bad)
    assert all(r.startswith("handshake failed") for r in server.results)


def test_application_check_catches_what_openssl_allows(
    tmp_path: Path, server_files: tuple[Path, Path, Path], alice: pki.Credential, trust: TrustStore
) -> None:
    # OpenSSL accepts "independent" proxies; verify_chain refuses them, so the app says 401.
    cert, key, ca_file = server_files
    srv = OneShotServer(server_context(cert, key, trust), trust)
    try:
        answer = ask(srv.port, client(tmp_path, pki.proxy(alice, policy=pki.PPL_INDEPENDENT), ca_file))
    finally:
        srv.close()
    assert answer.startswith("401 client certificate rejected:") and "independent proxy" in answer


def test_without_trust_no_certificate_is_requested(
    tmp_path: Path, server_files: tuple[Path, Path, Path], alice: pki.Credential, trust: TrustStore
) -> None:
    cert, key, ca_file = server_files
    srv = OneShotServer(server_context(cert, key, None), trust)
    try:
        assert (
            ask(srv.port, client(tmp_path, pki.proxy(alice), ca_file))
            == "401 no client certificate presented"
        )
    finally:
        srv.close()


def test_asyncio_server_gets_chain(
    tmp_path: Path, server_files: tuple[Path, Path, Path], alice: pki.Credential, trust: TrustStore
) -> None:
    cert, key, ca_file = server_files
    proxy = pki.proxy(alice)
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.append(len(peer_chain(ssl_object)))
        writer.write(("DN " + authenticate_peer(ssl_object, trust).dn + "\n").encode())
        await writer.drain()
        writer.close()

    async def main() -> str:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(cert, key, trust))
        port = server.sockets[0].getsockname()[1]
        ctx = client(tmp_path, proxy, ca_file)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return line.decode().strip()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == f"DN {ALICE}"
    assert seen == [2]  # the proxy and Alice's certificate, as presented


def test_require_client_cert(
    tmp_path: Path, server_files: tuple[Path, Path, Path], trust: TrustStore
) -> None:
    cert, key, ca_file = server_files
    srv = OneShotServer(server_context(cert, key, trust, require_client_cert=True), trust)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ask(srv.port, client(tmp_path, None, ca_file))
    finally:
        srv.close()
