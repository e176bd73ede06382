"""The publishing service's configuration: one TOML file.

Today's server reads ``keyword value`` lines from ``/etc/cvmfs-user-pub.conf`` and silently
ignores anything it does not know (rcds-today.md 2.11).  Here the file is TOML, every key is
checked, unknown keys are errors (typos do not pass unnoticed) and each error names the file
and the key.  Relative paths are taken relative to the file's directory.

:meth:`ServiceConfig.default` gives a working configuration without any file, rooted under a
directory; :func:`example_toml` returns a commented example file that documents every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from rcds.errors import ConfigError
from rcds.service.config_example import EXAMPLE
from rcds.service.config_values import parse_size

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_COMPRESSION",
    "DEFAULT_MAX_UNPACKED_SIZE",
    "DEFAULT_MAX_UPLOAD_SIZE",
    "DEFAULT_REPOSITORIES",
    "DEFAULT_TOKEN_SCOPE",
    "AuthConfig",
    "CleanupConfig",
    "ListenConfig",
    "NotifyConfig",
    "ReplicaConfig",
    "ServeConfig",
    "ServiceConfig",
    "StampsConfig",
    "TlsConfig",
    "TokenIssuerConfig",
    "example_toml",
    "parse_size",
]

DEFAULT_REPOSITORIES = ("user1.example.org", "user2.example.org")
DEFAULT_BASE_DIR = Path("/var/lib/rcds")
DEFAULT_MAX_UPLOAD_SIZE = 4 * 1024**3
#: Decompressed bytes one tarball may expand to (the engine's default limit).
DEFAULT_MAX_UNPACKED_SIZE = 64 * 1024**3
#: Compressor of the service's repositories: ISA-L, several times faster than zlib 1 for objects
#: of about the same size (docs/performance.md): the time to PRESENT matters most here.
DEFAULT_COMPRESSION = "isal:2"
#: Today's server requires this scope in tokens; kept as the default for compatibility.
DEFAULT_TOKEN_SCOPE = "compute.create"


@dataclass(frozen=True)
class CleanupConfig:
    """Expiry of unused tarballs: delete after ``maxdays`` days, nightly from ``start_hour``."""

    maxdays: int = 30
    start_hour: int = 2


@dataclass(frozen=True)
class ListenConfig:
    """Where the HTTP(S) API listens."""

    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class TlsConfig:
    """The server's certificate and the CAs trusted for client certificates.

    ``ca_dir`` is a directory of CA certificates in the style of
    ``/etc/grid-security/certificates``; ``ca_file`` a PEM bundle.  Without either, client
    certificates are not requested.
    """

    cert_file: Path
    key_file: Path
    ca_dir: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class TokenIssuerConfig:
    """One trusted bearer-token issuer.

    ``key_files`` hold its public keys (PEM public keys or certificates, or a JWKS JSON
    file); ``audiences`` are accepted ``aud`` values besides the WLCG "any" audience;
    ``scope`` must be granted by the token's ``scope`` claim.
    """

    issuer: str
    key_files: tuple[Path, ...]
    audiences: tuple[str, ...]
    scope: str = DEFAULT_TOKEN_SCOPE


@dataclass(frozen=True)
class AuthConfig:
    """Authentication sources and the group ACL.

    ``acl`` maps a principal (a grid-mapfile account, a token group with or without its
    leading ``/``, a full DN or token identity ``<iss>#<sub>``, or ``*`` for any authenticated
    identity) to the CID groups it may publish under (``*`` for all).  Independently of the ACL a principal
    equal to a CID group may publish under that group.
    """

    grid_mapfile: Path | None = None
    token_issuers: tuple[TokenIssuerConfig, ...] = ()
    require_auth_on_loopback: bool = False
    acl: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True)
class ReplicaConfig:
    """The partner server whose repositories this one replicates.

    ``partner_repository_url`` is where the partner serves its repositories (``@fqrn@`` is
    replaced by each name); ``partner_keys_dir`` holds their master public keys ``<fqrn>.pub``.
    """

    partner_url: str | None = None
    pull_interval: float = 30.0
    partner_repository_url: str | None = None
    partner_keys_dir: Path | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """Revision notifications (stock CernVM-FS protocol).

    ``broker``: serve ``/notifications/subscribe`` and ``/notifications/publish`` on the API
    listener and announce this server's new revisions there. ``servers``: other brokers (base
    URLs) every new revision is also POSTed to. ``allow_publish``: networks (CIDR) that may POST
    notifications to this broker.
    """

    broker: bool = True
    servers: tuple[str, ...] = ()
    allow_publish: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class ServeConfig:
    """Where the repositories (own and replicas) are served over HTTP for clients and proxies."""

    host: str = "127.0.0.1"
    port: int = 8000


@dataclass(frozen=True)
class StorageConfig:
    """Where new repositories keep their served trees: ``<s3>/<fqrn>`` in an S3 bucket.

    Keys, settings and scratch space stay under ``state_dir``; credentials come from the AWS
    environment or ``profile``, never from this file. An existing repository keeps the storage
    it was created with (its ``repo.json``).
    """

    s3: str
    endpoint: str = ""
    region: str = ""
    profile: str = ""
    acl: str = ""
    public_url: str = ""


@dataclass(frozen=True)
class StampsConfig:
    """How often pending "last used" stamps are written into the repositories."""

    flush_interval: float = 10.0


@dataclass(frozen=True)
class ServiceConfig:
    """The whole service configuration; see :func:`example_toml` for every key."""

    source: str
    base_dir: Path
    repositories: tuple[str, ...]
    prefix: str
    stamp_prefix: str
    state_dir: Path
    spool_dir: Path
    max_upload_size: int
    cleanup: CleanupConfig
    listen: ListenConfig
    tls: TlsConfig | None
    auth: AuthConfig
    replica: ReplicaConfig
    serve: ServeConfig = field(default_factory=ServeConfig)
    stamps: StampsConfig = field(default_factory=StampsConfig)
    max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    storage: StorageConfig | None = None
    compression: str = DEFAULT_COMPRESSION
    """``LIBRARY:LEVEL`` of new objects in the service's repositories (:mod:`rcds.format.deflaters`)."""

    @classmethod
    def load(cls, path: str | Path) -> ServiceConfig:
        """Read and validate the TOML file at ``path``."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config file: {e.strerror or e}") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: config file is not UTF-8: {e}") from e
        return cls.loads(text, source=str(p), relative_to=p.resolve().parent)

    @classmethod
    def loads(cls, text: str, source: str = "<string>", relative_to: Path | None = None) -> ServiceConfig:
        """Parse TOML ``text``; ``source`` names it in errors, ``relative_to`` anchors relative paths."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: invalid TOML: {e}") from e
        return _build(data, source, relative_to or Path.cwd(), None)

    @classmethod
    def default(cls, base_dir: str | Path) -> ServiceConfig:
        """The built-in defaults, with state and spool directories under ``base_dir``."""
        base = Path(base_dir).absolute()
        return _build({}, "<defaults>", base, base)

    def check_paths(self) -> None:
        """Raise :class:`ConfigError` naming the key of the first configured file that is missing."""
        checks: list[tuple[str, Path | None, bool]] = [("auth.grid_mapfile", self.auth.grid_mapfile, False)]
        if self.tls:
            checks += [
                ("tls.cert_file", self.tls.cert_file, False),
                ("tls.key_file", self.tls.key_file, False),
                ("tls.ca_dir", self.tls.ca_dir, True),
                ("tls.ca_file", self.tls.ca_file, False),
            ]
        for i, issuer in enumerate(self.auth.token_issuers):
            checks += [(f"auth.token_issuers[{i}].keys", k, False) for k in issuer.key_files]
        for key, path, is_dir in checks:
            if path is None:
                continue
            if not (path.is_dir() if is_dir else path.is_file()):
                kind = "directory" if is_dir else "file"
                raise ConfigError(f"{self.source}: {key}: {kind} {path} does not exist")


def _build(
    data: Mapping[str, object], source: str, relative_to: Path, base_default: Path | None
) -> ServiceConfig:
    """Check ``data`` and build the configuration (the builder imports this module, hence late)."""
    from rcds.service.config_builder import ConfigBuilder

    return ConfigBuilder(source, relative_to).build(data, base_default)


def example_toml() -> str:
    """A commented example configuration documenting every key; it parses as it is."""
    return EXAMPLE
