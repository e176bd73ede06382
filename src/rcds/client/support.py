"""Small pieces of the client API: defaults, master keys, and the records it returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from rcds.client.tree.stat import make_stat
from rcds.errors import ConfigError
from rcds.format import signed
from rcds.format.dirent import Dirent
from rcds.net.state import EndpointStatus
from rcds.repo.whitelist_age import WhitelistAge

DEFAULT_QUOTA = 4000 << 20

KeySpec = Path | str | bytes | signed.VerifyKey
"""A master key: a ``.pub`` file, its PEM text, or a key object (e.g. ``cryptography``'s)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rcds``, else ``~/.cache/rcds``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rcds"


def load_master_keys(specs: Sequence[KeySpec]) -> list[signed.VerifyKey]:
    """Master public keys from files (paths), PEM bytes or key objects (kept as they are)."""
    out: list[signed.VerifyKey] = []
    for spec in specs:
        if isinstance(spec, bytes):
            out.append(signed.load_verify_key(spec, "master public key"))
        elif isinstance(spec, str | os.PathLike):
            path = Path(spec)
            if not path.is_file():
                raise ConfigError(f"master public key {path} does not exist; give the repository's .pub file")
            out.append(signed.load_verify_key_file(path))
        else:
            out.append(spec)
    if not out:
        raise ConfigError("no master public key given; the repository's .pub file is needed to trust it")
    return out


class RepoInfo(NamedTuple):
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
    whitelist: WhitelistAge | None = None
    """The verified whitelist's validity now (see :mod:`rcds.repo.whitelist_age`)."""


class DirEntry:
    """One entry of :meth:`Repository.scandir`: ``name``, ``path``, ``stat`` (an ``lstat`` result,
    made on first use) and ``symlink`` (the link target, or ``""``)."""

    __slots__ = ("_dev", "_entry", "_mountpoint", "_stat", "name", "path", "symlink")

    def __init__(self, name: str, path: str, stat: os.stat_result, symlink: str) -> None:
        self.name = name
        self.path = path
        self.symlink = symlink
        self._stat: os.stat_result | None = stat
        self._entry: Dirent | None = None
        self._mountpoint = ""
        self._dev = 0

    @classmethod
    def of(cls, entry: Dirent, mountpoint: str, dev: int) -> DirEntry:
        """The entry of a catalog row (its ``stat`` is computed when first asked for)."""
        self = cls.__new__(cls)
        self.name = entry.name
        self.path = entry.path or "/"
        self.symlink = entry.symlink
        self._stat = None
        self._entry = entry
        self._mountpoint = mountpoint
        self._dev = dev
        return self

    @property
    def stat(self) -> os.stat_result:
        """Like :func:`os.lstat` of the entry."""
        if self._stat is None:
            assert self._entry is not None
            self._stat = make_stat(self._entry, self._mountpoint, self._dev)
        return self._stat

    def _mode(self) -> int:
        return self._entry.mode if self._entry is not None else self.stat.st_mode

    def is_dir(self) -> bool:
        """A directory (symlinks are not followed)."""
        return (self._mode() & 0o170000) == 0o040000

    def is_file(self) -> bool:
        """A regular file."""
        mode = self._mode() & 0o170000
        return mode == 0o100000 or mode == 0  # a row without a type bit is shown as a file

    def is_symlink(self) -> bool:
        """A symbolic link."""
        return (self._mode() & 0o170000) == 0o120000

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirEntry):
            return NotImplemented
        return (self.name, self.path, self.stat, self.symlink) == (
            other.name,
            other.path,
            other.stat,
            other.symlink,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.path, self.symlink))

    def __repr__(self) -> str:
        return f"DirEntry(name={self.name!r}, path={self.path!r}, symlink={self.symlink!r})"
