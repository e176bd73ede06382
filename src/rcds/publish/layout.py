"""Where a stratum 0 keeps things under its ``--root`` directory.

::

    ROOT/
      repo.json     settings (hash algorithm, compression, chunk sizes, TTL, whitelist validity...)
      public/       the served tree: .cvmfspublished, .cvmfswhitelist, data/00..ff, data/txn
                    (not there when repo.json names an S3 location: the bucket holds the tree)
      keys/         NAME.masterkey NAME.pub NAME.key NAME.crt   (0700 directory, 0600 files)
      lock          the writer lock (flock)
      work/         scratch space of the current writer (catalog copies); wiped by each writer
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rcds.errors import ConfigError, NotFoundError
from rcds.format.chunker import ChunkParams
from rcds.format.deflaters import DEFAULT, Compression
from rcds.format.hashes import Algorithm
from rcds.format.names import is_new_repository_name
from rcds.storage.base import Store
from rcds.storage.locate import is_s3, open_store
from rcds.storage.s3client import S3Location


def check_fqrn(name: str) -> str:
    """A name for a new repository: lowercase DNS labels with at least one dot
    (:func:`rcds.format.names.is_new_repository_name`)."""
    if not is_new_repository_name(name):
        raise ConfigError(
            f"{name!r} is not a valid repository name: use a fully qualified name like user1.example.org"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """Per-repository settings, stored in ``repo.json``.

    ``compression`` names the deflate library and level of new objects and catalogs
    (``LIBRARY:LEVEL``, :mod:`rcds.format.deflaters`); it may change over a repository's life
    (``rcds repo config``): objects written before stay valid. A ``repo.json`` of an older rcds
    holds ``compression_level`` N instead, read as ``zlib:N``.
    """

    name: str
    hash_algorithm: str = "sha1"
    compression: str = str(DEFAULT)
    chunk_min: int = 4 << 20
    chunk_avg: int = 8 << 20
    chunk_max: int = 16 << 20
    chunking: bool = True
    ttl: int = 240
    whitelist_days: int = 30
    extra: dict[str, str] = field(default_factory=dict)
    storage: str = ""
    """Where the served tree is: empty for ``ROOT/public``, or ``s3://bucket/prefix``."""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_profile: str = ""
    s3_acl: str = ""
    s3_public_url: str = ""
    """S3 options (see :class:`rcds.storage.s3client.S3Location`); credentials are never stored
    here: they come from the environment or the AWS profile."""

    @property
    def algorithm(self) -> Algorithm:
        """The content hash algorithm."""
        return Algorithm.from_name(self.hash_algorithm)

    @property
    def compressor(self) -> Compression:
        """The parsed ``compression`` setting."""
        return Compression.parse(self.compression)

    @property
    def chunk_params(self) -> ChunkParams | None:
        """Chunker parameters, or None when chunking is off."""
        return ChunkParams(self.chunk_min, self.chunk_avg, self.chunk_max) if self.chunking else None

    def validate(self) -> Settings:
        """Check values; return self."""
        check_fqrn(self.name)
        self.algorithm  # noqa: B018 - raises on unknown names
        self.chunk_params  # noqa: B018 - raises on bad sizes
        self.compressor  # noqa: B018 - raises on unknown libraries and levels
        if self.ttl < 1 or self.whitelist_days < 1:
            raise ConfigError("ttl and whitelist_days must be positive")
        if self.storage and not is_s3(self.storage):
            raise ConfigError(
                f"storage {self.storage!r}: give s3://BUCKET/PREFIX, or nothing for ROOT/public"
            )
        if self.storage:
            S3Location.parse(self.storage, **self.s3_options())
        return self

    def s3_options(self) -> dict[str, str | None]:
        """The S3 options as :func:`rcds.storage.locate.open_store` takes them."""
        return {
            "endpoint": self.s3_endpoint,
            "region": self.s3_region,
            "profile": self.s3_profile,
            "acl": self.s3_acl,
            "public_url": self.s3_public_url,
        }


@dataclass(frozen=True)
class Layout:
    """Paths of one repository's root directory."""

    root: Path
    name: str

    @property
    def settings_file(self) -> Path:
        """``repo.json``."""
        return self.root / "repo.json"

    @property
    def public(self) -> Path:
        """The served tree."""
        return self.root / "public"

    @property
    def keys(self) -> Path:
        """The key directory (never served)."""
        return self.root / "keys"

    @property
    def lock(self) -> Path:
        """The writer lock file."""
        return self.root / "lock"

    @property
    def work(self) -> Path:
        """Scratch space for the current writer."""
        return self.root / "work"

    def open_store(self, settings: Settings, *, create: bool = False) -> Store:
        """The store of the served tree: ``public/`` or the configured S3 location."""
        return open_store(settings.storage or self.public, create=create, **settings.s3_options())

    def key(self, suffix: str) -> Path:
        """``keys/NAME.<suffix>`` (masterkey, pub, key, crt)."""
        return self.keys / f"{self.name}.{suffix}"

    def load_settings(self) -> Settings:
        """Read ``repo.json``."""
        try:
            data = json.loads(self.settings_file.read_text())
        except FileNotFoundError:
            raise NotFoundError(
                f"no repository at {self.root} (no repo.json); create one with: rcds repo create {self.name} "
                f"--root {self.root}"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.settings_file}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.settings_file} does not hold a JSON object of settings")
        if "compression_level" in data:  # written by an older rcds: that was zlib
            level = data.pop("compression_level")
            data.setdefault("compression", f"zlib:{level}")
        try:
            settings = Settings(**data)
        except TypeError as exc:
            raise ConfigError(f"{self.settings_file} holds an unknown setting ({exc})") from None
        if settings.name != self.name:
            raise ConfigError(f"{self.root} holds repository {settings.name!r}, not {self.name!r}")
        return settings.validate()

    def save_settings(self, settings: Settings) -> None:
        """Write ``repo.json`` (a new file renamed over the old one: never half written)."""
        tmp = self.settings_file.with_name(self.settings_file.name + ".new")
        tmp.write_text(json.dumps(asdict(settings), indent=2) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.settings_file)
