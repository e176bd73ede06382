"""Turns a parsed TOML mapping into a :class:`~rcds.service.config.ServiceConfig`, checking every key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rcds.errors import ConfigError, InputError
from rcds.format.deflaters import Compression
from rcds.format.names import is_repository_name
from rcds.service.cid import validate_cid
from rcds.service.config import (
    DEFAULT_BASE_DIR,
    DEFAULT_COMPRESSION,
    DEFAULT_MAX_UNPACKED_SIZE,
    DEFAULT_MAX_UPLOAD_SIZE,
    DEFAULT_REPOSITORIES,
    DEFAULT_TOKEN_SCOPE,
    AuthConfig,
    CleanupConfig,
    ListenConfig,
    NotifyConfig,
    ReplicaConfig,
    ServeConfig,
    ServiceConfig,
    StampsConfig,
    StorageConfig,
    TlsConfig,
    TokenIssuerConfig,
)
from rcds.service.config_values import DIRNAME_RE, parse_size
from rcds.storage.s3client import S3Location

__all__ = ["ConfigBuilder"]


class ConfigBuilder:
    """Turns the parsed TOML mapping into a :class:`ServiceConfig`, checking every key.

    The helpers take the value itself and ``key``, the dotted name shown in errors.
    """

    def __init__(self, source: str, relative_to: Path) -> None:
        self.source = source
        self.relative_to = relative_to

    def fail(self, key: str, problem: str) -> ConfigError:
        """The error to raise for ``key``: the file, the dotted key and the problem."""
        return ConfigError(f"{self.source}: {key}: {problem}")

    def table(self, value: object, key: str, allowed: set[str]) -> Mapping[str, Any]:
        """A table (empty if absent) whose keys are all in ``allowed``."""
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
        """A non-empty string."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def int_(self, value: object, key: str, lo: int, hi: int | None = None) -> int:
        """An integer from ``lo`` to ``hi`` (no upper bound if None); booleans are refused."""
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
        """A path, relative to the configuration file's directory unless absolute (``~`` expanded)."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty path string, got {value!r}")
        return self.relative_to / Path(value).expanduser()

    def opt_path(self, value: object, key: str) -> Path | None:
        """:meth:`path`, or None if absent."""
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
        """One directory name of letters, digits, ``-`` and ``_``."""
        name = self.str_(value, key)
        if not DIRNAME_RE.match(name):
            raise self.fail(key, f"must be one directory name of letters, digits, '-' and '_', got {name!r}")
        return name

    def build(self, data: Mapping[str, Any], base_default: Path | None) -> ServiceConfig:
        """The whole configuration from the parsed TOML ``data`` (``base_default``: the default base_dir)."""
        top = self.table(data, "", {
            "base_dir", "repositories", "prefix", "stamp_prefix", "state_dir", "spool_dir",
            "max_upload_size", "max_unpacked_size", "cleanup", "listen", "tls", "auth", "acl", "replica",
            "serve", "stamps", "notify", "storage", "compression",
        })  # fmt: skip
        base = self.opt_path(top.get("base_dir"), "base_dir") or base_default or DEFAULT_BASE_DIR
        repos = self.str_list(top.get("repositories", list(DEFAULT_REPOSITORIES)), "repositories")
        for r in repos:
            if not is_repository_name(r) or len(r) > 200:
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

        compression = self.compression(top.get("compression", DEFAULT_COMPRESSION))
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
            notify=self.notify(top.get("notify")),
            storage=self.storage(top.get("storage")),
            compression=compression,
        )

    def notify(self, value: object) -> NotifyConfig:
        """The ``[notify]`` table."""
        t = self.table(value, "notify", {"broker", "servers", "allow_publish"})
        broker = t.get("broker", True)
        if not isinstance(broker, bool):
            raise self.fail("notify.broker", f"must be true or false, got {broker!r}")
        servers = self.str_list(t["servers"], "notify.servers") if t.get("servers", []) != [] else ()
        for url in servers:
            if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", url):
                raise self.fail("notify.servers", f"{url!r} is not a broker base URL like http://host:4929")
        raw_nets = t.get("allow_publish", list(NotifyConfig().allow_publish))
        nets = self.str_list(raw_nets, "notify.allow_publish") if raw_nets != [] else ()
        for n in nets:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError as e:
                raise self.fail(
                    "notify.allow_publish", f"{n!r} is not a network like 10.0.0.0/8: {e}"
                ) from None
        return NotifyConfig(broker, tuple(u.rstrip("/") for u in servers), tuple(nets))

    def storage(self, value: object) -> StorageConfig | None:
        """The ``[storage]`` table, or None if absent."""
        if value is None:
            return None
        keys = ("s3", "endpoint", "region", "profile", "acl", "public_url")
        t = self.table(value, "storage", set(keys))
        if "s3" not in t:
            raise self.fail("storage.s3", 'is required in a [storage] table: s3 = "s3://BUCKET/PREFIX"')
        got = {k: self.str_(t[k], f"storage.{k}") for k in keys if k in t}
        try:
            S3Location.parse(got["s3"], **{k: v for k, v in got.items() if k != "s3"})
        except ConfigError as e:
            raise self.fail("storage.s3", str(e)) from None
        return StorageConfig(**got)

    def compression(self, value: object) -> str:
        """``LIBRARY:LEVEL``, checked (a library that is not installed is reported when used)."""
        try:
            return str(Compression.parse(self.str_(value, "compression")))
        except ConfigError as e:
            raise self.fail("compression", str(e)) from None

    def serve(self, value: object) -> ServeConfig:
        """The ``[serve]`` table."""
        t = self.table(value, "serve", {"host", "port"})
        return ServeConfig(
            host=self.str_(t.get("host", "127.0.0.1"), "serve.host"),
            port=self.int_(t.get("port", 8000), "serve.port", 0, 65535),
        )

    def stamps(self, value: object) -> StampsConfig:
        """The ``[stamps]`` table."""
        t = self.table(value, "stamps", {"flush_interval"})
        interval = t.get("flush_interval", 10)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
            raise self.fail("stamps.flush_interval", f"must be seconds in (0, 3600], got {interval!r}")
        return StampsConfig(float(interval))

    def tls(self, value: object) -> TlsConfig | None:
        """The ``[tls]`` table, or None if absent."""
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
        """The ``[auth]`` table, with the ``[acl]`` table ``acl``."""
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
        """One token issuer of ``[auth]``."""
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
        """The ``[acl]`` table: the CID groups each principal may publish to (``*``: any)."""
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
        """The ``[replica]`` table."""
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
