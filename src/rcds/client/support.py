"""Small pieces of the client API: defaults, master keys, and the records it returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import ConfigError
from rcds.format import keys as keys_fmt
from rcds.net.state import EndpointStatus

DEFAULT_QUOTA = 4000 << 20

KeySpec = Path | str | bytes | rsa.RSAPublicKey


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rcds``, else ``~/.cache/rcds``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rcds"


def load_master_keys(specs: Sequence[KeySpec]) -> list[rsa.RSAPublicKey]:
    """Master public keys from files (paths), PEM bytes or key objects."""
    out: list[rsa.RSAPublicKey] = []
    for spec in specs:
        if isinstance(spec, rsa.RSAPublicKey):
            out.append(spec)
        elif isinstance(spec, bytes):
            out.append(keys_fmt.load_public_key(spec, "master public key"))
        else:
            path = Path(spec)
            if not path.is_file():
                raise ConfigError(f"master public key {path} does not exist; give the repository's .pub file")
            out.append(keys_fmt.load_public_key_file(path))
    if not out:
        raise ConfigError("no master public key given; the repository's .pub file is needed to trust it")
    return out


@dataclass(frozen=True, slots=True)
class RepoInfo:
    """What :meth:`Repository.info` reports."""

    fqrn: str
    revision: int
    root_hash: str
    published: int
    age: float
    ttl: float
    next_check_in: float
    offline: bool
    last_error: str | None
    endpoints: tuple[EndpointStatus, ...]
    cache_dir: Path
    cache_bytes: int
    cache_quota: int | None
    alien_cache: Path | None
    sources: dict[str, int]


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of :meth:`Repository.scandir`."""

    name: str
    path: str
    stat: os.stat_result
    symlink: str

    def is_dir(self) -> bool:
        """A directory (symlinks are not followed)."""
        return (self.stat.st_mode & 0o170000) == 0o040000

    def is_file(self) -> bool:
        """A regular file."""
        return (self.stat.st_mode & 0o170000) == 0o100000

    def is_symlink(self) -> bool:
        """A symbolic link."""
        return (self.stat.st_mode & 0o170000) == 0o120000
