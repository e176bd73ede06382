"""``rcds server check``: validate a service configuration before running it, saying what is wrong.

Each check yields a :class:`Finding` (ok, or an error naming the key and what to do). Nothing
is changed: files are only read, ports only bound for a moment.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import RcdsError
from rcds.service.auth.gridmap import parse_gridmap
from rcds.service.auth.tls import server_context
from rcds.service.auth.tokens import load_issuer_keys
from rcds.service.auth.truststore import TrustStore
from rcds.service.config import ServiceConfig
from rcds.service.core import init_command


@dataclass(frozen=True)
class Finding:
    """The outcome of one check."""

    ok: bool
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{'ok   ' if self.ok else 'ERROR'} {self.what}" + (f": {self.detail}" if self.detail else "")


def _readable(
    key: str, path: Path | None, parse: Callable[[bytes], object] | None = None
) -> Iterator[Finding]:
    if path is None:
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield Finding(False, key, f"cannot read {path}: {exc.strerror or exc}")
        return
    if parse is not None:
        try:
            parse(data)
        except (RcdsError, ValueError) as exc:
            yield Finding(False, key, f"{path}: {exc}")
            return
    yield Finding(True, key, str(path))


def _tls(cfg: ServiceConfig) -> Iterator[Finding]:
    tls = cfg.tls
    if tls is None:
        yield Finding(True, "tls", "not configured: the API serves plain HTTP")
        return
    files = list(_readable("tls.cert_file", tls.cert_file)) + list(_readable("tls.key_file", tls.key_file))
    yield from files
    trust = None
    if tls.ca_dir is not None or tls.ca_file is not None:
        try:
            trust = TrustStore.load(tls.ca_dir, tls.ca_file)
        except RcdsError as exc:
            yield Finding(False, "tls.ca_dir/ca_file", str(exc))
        else:
            yield Finding(True, "tls.ca_dir/ca_file", f"{len(trust)} CA certificates")
    if all(f.ok for f in files):
        try:
            server_context(tls.cert_file, tls.key_file, trust)
        except (OSError, ValueError) as exc:
            yield Finding(
                False, "tls.cert_file/key_file", f"the certificate and key do not load together: {exc}"
            )
        else:
            yield Finding(True, "tls.cert_file/key_file", "certificate and key match")


def _auth(cfg: ServiceConfig) -> Iterator[Finding]:
    auth = cfg.auth
    yield from _readable(
        "auth.grid_mapfile",
        auth.grid_mapfile,
        lambda d: parse_gridmap(d.decode("utf-8", "replace"), str(auth.grid_mapfile)),
    )
    for i, issuer in enumerate(auth.token_issuers):
        for path in issuer.key_files:
            yield from _readable(f"auth.token_issuers[{i}].keys ({issuer.issuer})", path, load_issuer_keys)
    if auth.token_issuers and cfg.tls is None:
        yield Finding(
            False, "auth.token_issuers", "bearer tokens over plain HTTP can be stolen: configure [tls]"
        )


def _port(key: str, host: str, port: int) -> Finding:
    if port == 0:
        return Finding(True, key, f"{host} port 0 (any free port)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        why = "in use by another process" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        return Finding(False, key, f"cannot listen on {host} port {port}: {why}")
    return Finding(True, key, f"{host} port {port} is free")


def _ports(cfg: ServiceConfig) -> Iterator[Finding]:
    listen, serve = cfg.listen, cfg.serve
    if listen.port and listen.port == serve.port and listen.host == serve.host:
        yield Finding(
            False, "listen.port/serve.port", f"the API and the repositories both want port {serve.port}"
        )
        return
    yield _port("listen", listen.host, listen.port)
    yield _port("serve", serve.host, serve.port)


def _writable_dir(key: str, path: Path) -> Finding:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Finding(False, key, f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Finding(False, key, f"{probe} is not writable by this user")
    return Finding(True, key, str(path) + ("" if path.exists() else " (created on first run)"))


def _repositories(cfg: ServiceConfig) -> Iterator[Finding]:
    yield _writable_dir("state_dir", cfg.state_dir)
    yield _writable_dir("spool_dir", cfg.spool_dir)
    for name in cfg.repositories:
        root = cfg.state_dir / name
        if not (root / "repo.json").exists():
            yield Finding(
                False, f"repository {name}", f"not created under {cfg.state_dir}; run: {init_command(cfg)}"
            )
            continue
        missing = [
            s for s in ("masterkey", "pub", "key", "crt") if not (root / "keys" / f"{name}.{s}").is_file()
        ]
        if missing:
            yield Finding(
                False, f"repository {name}", f"keys missing in {root / 'keys'}: {', '.join(missing)}"
            )
        elif not os.access(root / "keys" / f"{name}.key", os.R_OK):
            yield Finding(False, f"repository {name}", f"{root / 'keys' / (name + '.key')} is not readable")
        else:
            yield Finding(True, f"repository {name}", str(root))


def _replica(cfg: ServiceConfig) -> Iterator[Finding]:
    rc = cfg.replica
    given = [rc.partner_url, rc.partner_repository_url, rc.partner_keys_dir]
    if not any(given):
        return
    if not all(given):
        yield Finding(
            False,
            "replica",
            "partner_url, partner_repository_url and partner_keys_dir go together; set all three",
        )
        return
    assert rc.partner_keys_dir is not None and rc.partner_repository_url is not None
    if "@fqrn@" not in rc.partner_repository_url:
        yield Finding(False, "replica.partner_repository_url", "must contain @fqrn@ (replaced by each name)")
    if not rc.partner_keys_dir.is_dir():
        yield Finding(False, "replica.partner_keys_dir", f"{rc.partner_keys_dir} is not a directory")
    else:
        keys = sorted(p.name for p in rc.partner_keys_dir.glob("*.pub"))
        yield Finding(bool(keys), "replica.partner_keys_dir", f"{len(keys)} partner keys (<fqrn>.pub)")


def check(cfg: ServiceConfig) -> list[Finding]:
    """Every finding for ``cfg`` (which already parsed: keys and values are valid)."""
    source = f"embedded defaults under {cfg.base_dir}" if cfg.source == "<defaults>" else cfg.source
    out: list[Finding] = [Finding(True, "configuration", source)]
    for part in (_tls, _auth, _ports, _repositories, _replica):
        out.extend(part(cfg))
    return out
