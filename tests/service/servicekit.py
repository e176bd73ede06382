"""Helpers for the service API, spool, cleanup and end-to-end tests (``import servicekit``).

* :func:`config` writes a service configuration (ports 0 unless given) and loads it;
* :class:`Pki` holds a test PKI on disk: CA file, a server certificate for 127.0.0.1/localhost,
  user certificates and RFC 3820 proxies, a grid-mapfile and a token issuer;
* :class:`Api` is a small urllib3 client for ``/pubapi`` (optionally with TLS, a proxy or a token);
* :func:`tarball` / :func:`cid_of` make tarballs and the CIDs today's clients give them;
* :func:`revisions`, :func:`connect`, :func:`start_upload` and :func:`read_until_closed` look at a
  running service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from rcds.service.auth.tls import client_context
from rcds.service.config import ServiceConfig
from rcds.service.runner import ServiceThread

import pki
from testkit import Entry, make_tar
from testkit import wait_until as wait_until  # re-exported: kit.wait_until

GROUP = "dune"
ALICE_DN = "/DC=org/DC=example/O=Test/CN=Alice Smith"  # grid-mapfile account: dune
BOB_DN = "/DC=org/DC=example/O=Test/CN=Bob Jones"  # grid-mapfile account: mu2e


def tarball(files: Mapping[str, bytes] | None = None, *, seed: str = "", compression: str = "gz") -> bytes:
    """A small tarball; ``seed`` makes its content (and so its CID) unique."""
    files = dict(files or {"bin/run.sh": b"#!/bin/sh\necho " + seed.encode() + b"\n"})
    files["README"] = seed.encode() * 20
    return make_tar([Entry(n, d, mode=0o755) for n, d in files.items()], compression)


def cid_of(data: bytes, group: str = GROUP) -> str:
    """``<group>/<sha256 hex>``, as jobsub makes it."""
    return f"{group}/{hashlib.sha256(data).hexdigest()}"


def revisions(svc: ServiceThread) -> dict[str, int]:
    """The current revision of each of the service's repositories."""
    return {s.name: s.s0.manifest().revision for s in svc.service.slots}


def connect(url: str) -> socket.socket:
    """A raw connection to the pubapi at ``http://HOST:PORT`` (for requests no client would send)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def start_upload(url: str, cid: str, length: int) -> socket.socket:
    """A raw connection that has sent the head of a publish of ``length`` bytes under ``cid``; the
    caller sends the body (or part of it)."""
    s = connect(url)
    s.sendall(
        f"POST /pubapi/publish?cid={cid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
    )
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection (or resets it, or times out); then
    closes ``s``."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    return out


def config(
    base: Path,
    *,
    repositories: tuple[str, ...] = ("user1.example.org", "user2.example.org"),
    listen_port: int = 0,
    serve_port: int = 0,
    extra: str = "",
    tables: str = "",
) -> ServiceConfig:
    """A configuration under ``base`` (written to ``base/server.toml``); ``extra`` goes to the
    top level, ``tables`` after the generated tables."""
    base.mkdir(parents=True, exist_ok=True)
    text = (
        f'base_dir = "{base}"\n'
        f"repositories = {json.dumps(list(repositories))}\n"
        f"{extra}\n"
        f"[listen]\nport = {listen_port}\n"
        f"[serve]\nport = {serve_port}\n"
        f"{tables}\n"
    )
    path = base / "server.toml"
    path.write_text(text)
    return ServiceConfig.load(path)


@dataclass
class Pki:
    """A CA with a server certificate, users, proxies, a grid-mapfile and a token issuer, on disk."""

    dir: Path
    ca: pki.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    gridmap: Path
    alice: pki.Credential
    bob: pki.Credential
    token_key: pki.TokenKey
    jwks: Path

    @classmethod
    def create(cls, directory: Path, ca: pki.CA) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        host = ca.issue("/DC=org/DC=example/CN=localhost", server=True, sans=["localhost", "127.0.0.1"])
        cert, key = host.write(directory, "hostcert")
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(pki.cert_pem(ca.cert))
        gridmap = directory / "grid-mapfile"
        gridmap.write_text(f'"{ALICE_DN}" dune\n"{BOB_DN}" mu2e\n')
        token_key = pki.TokenKey("ES256")
        jwks = pki.write_jwks(directory / "issuer.jwks", token_key)
        return cls(
            directory, ca, ca_file, cert, key, gridmap, ca.issue(ALICE_DN), ca.issue(BOB_DN), token_key, jwks
        )

    def tls_tables(self, *, require_auth_on_loopback: bool = True) -> str:
        """``[tls]`` and ``[auth]`` tables (with one token issuer) for :func:`config`."""
        return (
            f'[tls]\ncert_file = "{self.server_cert}"\nkey_file = "{self.server_key}"\n'
            f'ca_file = "{self.ca_file}"\n'
            f'[auth]\ngrid_mapfile = "{self.gridmap}"\n'
            f"require_auth_on_loopback = {str(require_auth_on_loopback).lower()}\n"
            f'[[auth.token_issuers]]\nissuer = "{pki.ISSUER}"\nkeys = ["{self.jwks}"]\n'
            f'audience = ["{pki.AUDIENCE}"]\n'
        )

    def credential_file(self, cred: pki.Credential, stem: str) -> tuple[Path, Path]:
        """Write a credential like an ``X509_USER_PROXY`` file (certificate, chain; key apart)."""
        return cred.write(self.dir / "creds", stem)

    def context(self, cred: pki.Credential | None = None, stem: str = "cred") -> ssl.SSLContext:
        """A client TLS context trusting the CA, presenting ``cred`` if given."""
        if cred is None:
            return client_context(ca_file=self.ca_file)
        cert, key = self.credential_file(cred, stem)
        return client_context(cert, key, ca_file=self.ca_file)

    def token(self, **kw: Any) -> str:
        """A bearer token of the test issuer (see :func:`pki.claims` for the keywords)."""
        return self.token_key.sign(pki.claims(pki.ISSUER, **kw))


@dataclass
class Reply:
    """An HTTP answer."""

    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


class Api:
    """A ``/pubapi`` client on one keep-alive pool."""

    def __init__(
        self, base_url: str, *, ssl_context: ssl.SSLContext | None = None, token: str | None = None
    ) -> None:
        self.base = base_url.rstrip("/")
        kw: dict[str, Any] = {"ssl_context": ssl_context} if ssl_context is not None else {}
        self.pool = urllib3.PoolManager(
            num_pools=2, maxsize=4, retries=False, timeout=urllib3.Timeout(connect=5, read=30), **kw
        )
        self.token = token

    def request(
        self,
        method: str,
        verb: str,
        cid: str | None = None,
        *,
        body: bytes | None = None,
        query: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if self.token is not None:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        url = f"{self.base}/pubapi/{verb}"
        if query is not None:
            url += "?" + query
        elif cid is not None:
            url += "?cid=" + cid
        r = self.pool.request(method, url, body=body, headers=hdrs, preload_content=True)
        return Reply(r.status, r.data.decode("utf-8", "replace"), dict(r.headers))

    def get(self, verb: str, cid: str | None = None, **kw: Any) -> Reply:
        return self.request("GET", verb, cid, **kw)

    def page(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        """``GET <base><path>`` (``/status``, ``/metrics``) with the client's credentials."""
        hdrs = dict(headers or {})
        if self.token is not None:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        r = self.pool.request("GET", self.base + path, headers=hdrs, redirect=False, preload_content=True)
        return Reply(r.status, r.data.decode("utf-8", "replace"), dict(r.headers))

    def publish(self, cid: str, data: bytes, **kw: Any) -> Reply:
        return self.request("POST", "publish", cid, body=data, **kw)

    def wait_status(
        self, cid: str, done: tuple[str, ...] = ("PUBLISHED", "FAILED"), timeout: float = 30
    ) -> Reply:
        """Poll ``status`` until its text starts with one of ``done``."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.get("status", cid)
            if r.text.startswith(done) or time.monotonic() > deadline:
                return r
            time.sleep(0.02)

    def publish_and_wait(self, data: bytes, where: str = "") -> Reply:
        """Publish ``data`` under its CID, which must be accepted and then published (under
        ``/cvmfs/<where>/`` if given); the final ``status`` reply."""
        cid = cid_of(data)
        assert self.publish(cid, data).text == "OK\n"
        reply = self.wait_status(cid)
        assert reply.text.startswith(f"PUBLISHED:/cvmfs/{where}/" if where else "PUBLISHED:"), reply.text
        return reply

    def close(self) -> None:
        self.pool.clear()


def spool_files(spool_dir: Path) -> list[str]:
    """Every file left in the spool's incoming and queue directories."""
    return sorted(
        str(p.relative_to(spool_dir))
        for d in ("incoming", "queue")
        for p in (spool_dir / d).rglob("*")
        if p.is_file()
    )


def utc(ts: float) -> dt.datetime:
    """An aware UTC datetime."""
    return dt.datetime.fromtimestamp(ts, dt.UTC)
