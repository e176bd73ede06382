"""The publishing service's configuration: one TOML file.

Today's server reads ``keyword value`` lines from ``/etc/cvmfs-user-pub.conf`` and silently
ignores anything it does not know (rcds-today.md 2.11).  Here the file is TOML, every key is
checked, unknown keys are errors (typos do not pass unnoticed) and each error names the file
and the key.  Relative paths are taken relative to the file's directory.

:meth:`ServiceConfig.default` gives a working configuration without any file, rooted under a
directory; :func:`example_toml` returns a commented example file that documents every key.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rcds.errors import ConfigError, InputError
from rcds.service.cid import validate_cid
from rcds.service.config_example import EXAMPLE

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_MAX_UNPACKED_SIZE",
    "DEFAULT_MAX_UPLOAD_SIZE",
    "DEFAULT_REPOSITORIES",
    "DEFAULT_TOKEN_SCOPE",
    "AuthConfig",
    "CleanupConfig",
    "ListenConfig",
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
#: Today's server requires this scope in tokens; kept as the default for compatibility.
DEFAULT_TOKEN_SCOPE = "compute.create"

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_FQRN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
_FQRN_RE = re.compile(rf"^{_FQRN_LABEL}(?:\.{_FQRN_LABEL})+$")
_DIRNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def parse_size(value: int | str) -> int:
    """Turn ``4294967296``, ``"4GiB"``, ``"4 GiB"``, ``"4G"`` or ``"1.5GB"`` into bytes.

    ``K``/``M``/``G``/``T`` and ``KiB``..``TiB`` are powers of 1024, ``KB``..``TB`` powers of
    1000; units are case-insensitive.  Raises :class:`ValueError` for anything else or a
    size below one byte.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '4GiB'")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size such as 4294967296, '4GiB' or '500MB'")
        size = math.floor(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    return size


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
class ServeConfig:
    """Where the repositories (own and replicas) are served over HTTP for clients and proxies."""

    host: str = "127.0.0.1"
    port: int = 8000


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
        return _Builder(source, relative_to or Path.cwd()).build(data, None)

    @classmethod
    def default(cls, base_dir: str | Path) -> ServiceConfig:
        """The built-in defaults, with state and spool directories under ``base_dir``."""
        base = Path(base_dir).absolute()
        return _Builder("<defaults>", base).build({}, base)

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


class _Builder:
    """Turns the parsed TOML mapping into a :class:`ServiceConfig`, checking every key.

    The helpers take the value itself and ``key``, the dotted name shown in errors.
    """

    def __init__(self, source: str, relative_to: Path) -> None:
        self.source = source
        self.relative_to = relative_to

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def table(self, value: object, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a table, got {_tname(value)}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            where = f"{key}.{_tomlkey(unknown[0])}" if key else _tomlkey(unknown[0])
            raise self.fail(where, f"unknown key (known: {', '.join(sorted(allowed))})")
        return value

    def str_(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def int_(self, value: object, key: str, lo: int, hi: int | None = None) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(key, f"must be an integer {rng}, got {value!r}")
        return value

    def path(self, value: object, key: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty path string, got {value!r}")
        return self.relative_to / Path(value).expanduser()

    def opt_path(self, value: object, key: str) -> Path | None:
        return None if value is None else self.path(value, key)

    def str_list(self, value: object, key: str) -> tuple[str, ...]:
        """A string or a non-empty list of strings."""
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise self.fail(key, f"must be a non-empty string or array of non-empty strings, got {value!r}")
        return tuple(value)

    def dirname(self, value: object, key: str) -> str:
        name = self.str_(value, key)
        if not _DIRNAME_RE.match(name):
            raise self.fail(key, f"must be one directory name of letters, digits, '-' and '_', got {name!r}")
        return name

    def build(self, data: Mapping[str, Any], base_default: Path | None) -> ServiceConfig:
        top = self.table(data, "", {
            "base_dir", "repositories", "prefix", "stamp_prefix", "state_dir", "spool_dir",
            "max_upload_size", "max_unpacked_size", "cleanup", "listen", "tls", "auth", "acl", "replica",
            "serve", "stamps",
        })  # fmt: skip
        base = self.opt_path(top.get("base_dir"), "base_dir") or base_default or DEFAULT_BASE_DIR
        repos = self.str_list(top.get("repositories", list(DEFAULT_REPOSITORIES)), "repositories")
        for r in repos:
            if not _FQRN_RE.match(r) or len(r) > 200:
                raise self.fail("repositories", f"{r!r} is not a fully qualified repository name")
        if len(set(repos)) != len(repos):
            raise self.fail("repositories", "names must be unique")
        prefix = self.dirname(top.get("prefix", "sw"), "prefix")
        stamp_prefix = self.dirname(top.get("stamp_prefix", "ts"), "stamp_prefix")
        if prefix == stamp_prefix:
            raise self.fail("stamp_prefix", f"must differ from prefix ({prefix!r})")
        try:
            max_upload = parse_size(top.get("max_upload_size", DEFAULT_MAX_UPLOAD_SIZE))
        except (ValueError, TypeError) as e:
            raise self.fail("max_upload_size", str(e)) from None
        try:
            max_unpacked = parse_size(top.get("max_unpacked_size", DEFAULT_MAX_UNPACKED_SIZE))
        except (ValueError, TypeError) as e:
            raise self.fail("max_unpacked_size", str(e)) from None

        cl = self.table(top.get("cleanup"), "cleanup", {"maxdays", "start_hour"})
        cleanup = CleanupConfig(
            maxdays=self.int_(cl.get("maxdays", 30), "cleanup.maxdays", 1),
            start_hour=self.int_(cl.get("start_hour", 2), "cleanup.start_hour", 0, 23),
        )
        li = self.table(top.get("listen"), "listen", {"host", "port"})
        listen = ListenConfig(
            host=self.str_(li.get("host", "127.0.0.1"), "listen.host"),
            port=self.int_(li.get("port", 8080), "listen.port", 0, 65535),
        )
        return ServiceConfig(
            source=self.source,
            base_dir=base,
            repositories=repos,
            prefix=prefix,
            stamp_prefix=stamp_prefix,
            state_dir=self.opt_path(top.get("state_dir"), "state_dir") or base / "repos",
            spool_dir=self.opt_path(top.get("spool_dir"), "spool_dir") or base / "spool",
            max_upload_size=max_upload,
            cleanup=cleanup,
            listen=listen,
            tls=self.tls(top.get("tls")),
            auth=self.auth(top.get("auth"), top.get("acl")),
            replica=self.replica(top.get("replica")),
            serve=self.serve(top.get("serve")),
            stamps=self.stamps(top.get("stamps")),
            max_unpacked_size=max_unpacked,
        )

    def serve(self, value: object) -> ServeConfig:
        t = self.table(value, "serve", {"host", "port"})
        return ServeConfig(
            host=self.str_(t.get("host", "127.0.0.1"), "serve.host"),
            port=self.int_(t.get("port", 8000), "serve.port", 0, 65535),
        )

    def stamps(self, value: object) -> StampsConfig:
        t = self.table(value, "stamps", {"flush_interval"})
        interval = t.get("flush_interval", 10)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
            raise self.fail("stamps.flush_interval", f"must be seconds in (0, 3600], got {interval!r}")
        return StampsConfig(float(interval))

    def tls(self, value: object) -> TlsConfig | None:
        if value is None:
            return None
        t = self.table(value, "tls", {"cert_file", "key_file", "ca_dir", "ca_file"})
        for required in ("cert_file", "key_file"):
            if required not in t:
                raise self.fail(f"tls.{required}", "is required when a [tls] table is given")
        return TlsConfig(
            cert_file=self.path(t["cert_file"], "tls.cert_file"),
            key_file=self.path(t["key_file"], "tls.key_file"),
            ca_dir=self.opt_path(t.get("ca_dir"), "tls.ca_dir"),
            ca_file=self.opt_path(t.get("ca_file"), "tls.ca_file"),
        )

    def auth(self, value: object, acl: object) -> AuthConfig:
        a = self.table(value, "auth", {"grid_mapfile", "token_issuers", "require_auth_on_loopback"})
        raw_issuers = a.get("token_issuers", [])
        if not isinstance(raw_issuers, list):
            raise self.fail("auth.token_issuers", "must be an array of tables ([[auth.token_issuers]])")
        issuers: list[TokenIssuerConfig] = []
        for i, raw in enumerate(raw_issuers):
            issuers.append(self.issuer(raw, f"auth.token_issuers[{i}]"))
            if any(x.issuer == issuers[-1].issuer for x in issuers[:-1]):
                raise self.fail(
                    f"auth.token_issuers[{i}].issuer", f"{issuers[-1].issuer!r} is configured twice"
                )
        loopback = a.get("require_auth_on_loopback", False)
        if not isinstance(loopback, bool):
            raise self.fail("auth.require_auth_on_loopback", f"must be true or false, got {loopback!r}")
        return AuthConfig(
            grid_mapfile=self.opt_path(a.get("grid_mapfile"), "auth.grid_mapfile"),
            token_issuers=tuple(issuers),
            require_auth_on_loopback=loopback,
            acl=self.acl(acl),
        )

    def issuer(self, value: object, key: str) -> TokenIssuerConfig:
        t = self.table(value, key, {"issuer", "keys", "audience", "scope"})
        for required in ("issuer", "keys", "audience"):
            if required not in t:
                raise self.fail(f"{key}.{required}", "is required")
        iss = self.str_(t["issuer"], f"{key}.issuer")
        if not iss.startswith("https://") or any(c.isspace() for c in iss) or "#" in iss:
            raise self.fail(f"{key}.issuer", f"must be an https:// URL, got {iss!r}")
        scope = self.str_(t.get("scope", DEFAULT_TOKEN_SCOPE), f"{key}.scope")
        if any(c.isspace() for c in scope):
            raise self.fail(f"{key}.scope", f"must be a single scope without spaces, got {scope!r}")
        return TokenIssuerConfig(
            issuer=iss,
            key_files=tuple(
                self.relative_to / Path(k).expanduser() for k in self.str_list(t["keys"], f"{key}.keys")
            ),
            audiences=self.str_list(t["audience"], f"{key}.audience"),
            scope=scope,
        )

    def acl(self, value: object) -> Mapping[str, tuple[str, ...]]:
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            raise self.fail("acl", f"must be a table, got {_tname(value)}")
        raw: Mapping[str, Any] = value
        acl: dict[str, tuple[str, ...]] = {}
        for principal, groups in raw.items():
            key = f"acl.{_tomlkey(principal)}"
            if not principal.strip():
                raise self.fail(key, "principal names may not be empty")
            values = () if groups == [] else self.str_list(groups, key)
            for g in values:
                if g == "*":
                    continue
                try:
                    validate_cid(g, max_depth=1)
                except InputError as e:
                    raise self.fail(key, f"{g!r} is not a CID group: {e}") from None
            acl[principal] = values
        return MappingProxyType(acl)

    def replica(self, value: object) -> ReplicaConfig:
        r = self.table(
            value, "replica", {"partner_url", "pull_interval", "partner_repository_url", "partner_keys_dir"}
        )
        url = r.get("partner_url")
        if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^\s/]+(/\S*)?$", url)):
            raise self.fail("replica.partner_url", f"must be an http:// or https:// URL, got {url!r}")
        interval = r.get("pull_interval", 30)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 86400:
            raise self.fail(
                "replica.pull_interval", f"must be a number of seconds in (0, 86400], got {interval!r}"
            )
        repo_url = r.get("partner_repository_url")
        if repo_url is not None and not (
            isinstance(repo_url, str) and re.match(r"^https?://[^\s/]+/\S*@fqrn@", repo_url)
        ):
            raise self.fail(
                "replica.partner_repository_url",
                f"must be an http(s):// URL containing @fqrn@, got {repo_url!r}",
            )
        return ReplicaConfig(
            url.rstrip("/") if url else None,
            float(interval),
            repo_url.rstrip("/") if repo_url else None,
            self.opt_path(r.get("partner_keys_dir"), "replica.partner_keys_dir"),
        )


def _tname(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(value), type(value).__name__)  # fmt: skip


def _tomlkey(key: str) -> str:
    return (
        key
        if re.match(r"^[A-Za-z0-9_-]+$", key)
        else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


def example_toml() -> str:
    """A commented example configuration documenting every key; it parses as it is."""
    return EXAMPLE
