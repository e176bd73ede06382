"""Stand-alone replicas on disk: what ``rcds replica add`` records and ``snapshot`` / ``run`` read.

A replica root (stock: ``/srv/cvmfs``) holds one directory per repository, laid out like a
stratum 0's public tree (``<root>/<fqrn>/.cvmfspublished``, ``data/xx/...``), so a web server can
serve ``<root>`` at ``/cvmfs/``. Next to the stock files each replica directory holds its own
settings, in files that are neither ``.cvmfs*`` nor under ``data/`` (so rcds never serves them):

* ``.rcds-replica.toml``: ``fqrn``, ``upstream`` (base URL of a stratum 0 or another stratum 1);
* ``.rcds-replica.pub``: a copy of the repository's master public key(s), PEM;
* ``.rcds-roots``: the root catalogs this replica has served, newest last (for ``gc``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import ConfigError, NotFoundError
from rcds.format.keys import load_public_key_file
from rcds.format.names import is_repository_name
from rcds.replica.replicator import ReplicaSpec
from rcds.replica.snapshot import MASTER_REPLICA, init_replica

SETTINGS = ".rcds-replica.toml"
"""The replica's settings file (inside its directory)."""

KEY = ".rcds-replica.pub"
"""The copy of the master public key (inside the replica directory)."""

_MASTER_REPLICA_TEXT = b"This file marks the repository as replicatable to stratum 1 servers\n"


@dataclass(frozen=True)
class ReplicaEntry:
    """One registered replica: its name, upstream URL, key file and directory."""

    fqrn: str
    upstream: str
    key: Path
    dir: Path

    def spec(self) -> ReplicaSpec:
        """The :class:`ReplicaSpec` the replicator pulls."""
        return ReplicaSpec(self.fqrn, self.upstream, self.key, self.dir)


def check_fqrn(fqrn: str) -> str:
    """Return ``fqrn`` if it is a repository name (:mod:`rcds.format.names`), else raise ConfigError."""
    if not is_repository_name(fqrn):
        raise ConfigError(f"{fqrn!r} is not a repository name like sw.example.org (letters, digits, dots)")
    return fqrn


def check_upstream(url: str, fqrn: str) -> str:
    """Return the upstream base URL without a trailing slash (it must be http:// or https://)."""
    u = url.rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", u):
        raise ConfigError(f"upstream {url!r} is not an http:// or https:// URL like http://host/cvmfs/{fqrn}")
    return u


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_replica(
    root: Path, fqrn: str, upstream: str, key_file: Path, *, master_replica: bool = True
) -> ReplicaEntry:
    """Create the replica directory ``root/fqrn`` and record its upstream and key.

    The key must load as an RSA public key; it is copied into the replica. With
    ``master_replica`` the replica carries ``.cvmfs_master_replica``, so other stratum 1s may
    replicate from it. Adding an existing replica again updates its upstream and key (nothing
    else changes). Nothing is written when an argument is bad.
    """
    check_fqrn(fqrn)
    url = check_upstream(upstream, fqrn)
    try:
        pem = Path(key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the master key {key_file}: {exc.strerror}") from None
    load_public_key_file(Path(key_file))  # refuse a file that is not a public key, before writing
    d = Path(root) / fqrn
    store = init_replica(d)
    _write_atomic(d / KEY, pem)
    _write_atomic(d / SETTINGS, f"fqrn = {_toml_string(fqrn)}\nupstream = {_toml_string(url)}\n".encode())
    if master_replica and not store.has(MASTER_REPLICA):
        store.put(MASTER_REPLICA, _MASTER_REPLICA_TEXT)
    elif not master_replica:
        store.delete(MASTER_REPLICA)
    return ReplicaEntry(fqrn, url, d / KEY, d)


def load_replica(root: Path, fqrn: str) -> ReplicaEntry:
    """The replica ``fqrn`` registered under ``root`` (NotFoundError if it was never added)."""
    d = Path(root) / check_fqrn(fqrn)
    try:
        data = tomllib.loads((d / SETTINGS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(
            f"no replica {fqrn} under {root}; add it first: rcds replica add {fqrn} --upstream URL --key PUB"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {d / SETTINGS}: {exc}; add the replica again to rewrite it") from None
    if data.get("fqrn") != fqrn or not isinstance(data.get("upstream"), str):
        raise ConfigError(f"{d / SETTINGS} does not describe {fqrn}; add the replica again to rewrite it")
    return ReplicaEntry(fqrn, check_upstream(data["upstream"], fqrn), d / KEY, d)


def list_replicas(root: Path) -> list[ReplicaEntry]:
    """Every replica registered under ``root``, by name."""
    try:
        names = sorted(p.name for p in Path(root).iterdir() if (p / SETTINGS).is_file())
    except FileNotFoundError:
        return []
    return [load_replica(root, n) for n in names]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}; check permissions") from None
