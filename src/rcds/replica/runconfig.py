"""The TOML configuration of ``rcds replica run``.

::

    [replica]
    root = "/srv/cvmfs"     # replica directories: <root>/<fqrn>; replicas added there are included
    interval = 60           # seconds between pulls without notification (fallback)
    retry = 10              # seconds before retrying a failed pull (capped by interval)
    parallel = 2            # repositories pulled at the same time
    workers = 8             # download threads per pull

    [serve]                 # optional: serve <root> at http://host:port/cvmfs/<fqrn>/
    host = "127.0.0.1"
    port = 8000
    root_max_age = 61       # Cache-Control of .cvmfs* files
    object_max_age = 259200 # Cache-Control of objects (immutable)

    [notify]                # optional: revision notifications (stock CernVM-FS protocol)
    subscribe = ["http://stratum0.example.org:8080"]  # pull as soon as these brokers announce
    announce = ["http://broker.example.org:4929"]     # announce each pulled revision to these
    broker_port = 4929      # and serve a broker of our own (on [serve] host, else 127.0.0.1)

    [metrics]               # optional: Prometheus metrics at http://host:port/metrics
    host = "127.0.0.1"
    port = 9108

    [[repository]]          # optional: replicas to add (or update) at start
    name = "sw.example.org"
    upstream = "http://stratum0.example.org/cvmfs/sw.example.org"
    key = "/etc/cvmfs/keys/sw.example.org.pub"

Relative paths are relative to the configuration file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcds.errors import ConfigError


@dataclass(frozen=True)
class RepositoryConfig:
    """A ``[[repository]]`` table."""

    name: str
    upstream: str
    key: Path


@dataclass(frozen=True)
class ServeConfig:
    """The ``[serve]`` table."""

    host: str = "127.0.0.1"
    port: int = 8000
    root_max_age: int = 61
    object_max_age: int = 259200


@dataclass(frozen=True)
class NotifyConfig:
    """The ``[notify]`` table: brokers to follow and to announce to, and an own broker."""

    subscribe: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    broker_port: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """The whole ``rcds replica run`` configuration."""

    root: Path
    interval: float = 60.0
    retry: float = 10.0
    parallel: int = 2
    workers: int = 8
    serve: ServeConfig | None = None
    repositories: list[RepositoryConfig] = field(default_factory=list)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: tuple[str, int] | None = None
    """(host, port) of the ``/metrics`` server, if any."""


def _number(table: dict[str, Any], key: str, default: float, where: str, *, integer: bool = False) -> Any:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value <= 0
        or (integer and not isinstance(value, int))
    ):
        kind = "a positive whole number" if integer else "a positive number"
        raise ConfigError(f"{where}: {key} must be {kind}, not {value!r}")
    return value


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(extra)}; known: {', '.join(sorted(known))}"
        )


def load_run_config(path: Path) -> RunConfig:
    """Read and check ``path``; raise ConfigError naming the bad setting."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    base = Path(path).resolve().parent
    _unknown(data, {"replica", "serve", "repository", "notify", "metrics"}, str(path))
    rep = data.get("replica")
    if not isinstance(rep, dict) or not isinstance(rep.get("root"), str):
        raise ConfigError(f'{path}: a [replica] table with root = "DIR" is required')
    where = f"{path} [replica]"
    _unknown(rep, {"root", "interval", "retry", "parallel", "workers"}, where)
    serve = None
    if "serve" in data:
        s = data["serve"]
        if not isinstance(s, dict):
            raise ConfigError(f"{path}: [serve] must be a table")
        sw = f"{path} [serve]"
        _unknown(s, {"host", "port", "root_max_age", "object_max_age"}, sw)
        port = s.get("port", 8000)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"{sw}: port must be 0-65535 (0: any free port), not {port!r}")
        if not isinstance(s.get("host", ""), str):
            raise ConfigError(f"{sw}: host must be a string")
        serve = ServeConfig(
            host=s.get("host", "127.0.0.1"),
            port=port,
            root_max_age=_number(s, "root_max_age", 61, sw, integer=True),
            object_max_age=_number(s, "object_max_age", 259200, sw, integer=True),
        )
    repos: list[RepositoryConfig] = []
    tables = data.get("repository", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: use [[repository]] tables for repositories")
    for i, t in enumerate(tables, 1):
        rw = f"{path} [[repository]] #{i}"
        if not isinstance(t, dict):
            raise ConfigError(f"{rw} must be a table")
        _unknown(t, {"name", "upstream", "key"}, rw)
        if not all(isinstance(t.get(k), str) for k in ("name", "upstream", "key")):
            raise ConfigError(f"{rw}: name, upstream and key (strings) are required")
        repos.append(RepositoryConfig(t["name"], t["upstream"], base / t["key"]))
    return RunConfig(
        notify=_notify(data.get("notify", {}), f"{path} [notify]"),
        metrics=_metrics(data["metrics"], f"{path} [metrics]") if "metrics" in data else None,
        root=base / rep["root"],
        interval=float(_number(rep, "interval", 60, where)),
        retry=float(_number(rep, "retry", 10, where)),
        parallel=_number(rep, "parallel", 2, where, integer=True),
        workers=_number(rep, "workers", 8, where, integer=True),
        serve=serve,
        repositories=repos,
    )


def _notify(table: object, where: str) -> NotifyConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _unknown(table, {"subscribe", "announce", "broker_port"}, where)
    lists = {}
    for key in ("subscribe", "announce"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(
            isinstance(u, str) and u.startswith(("http://", "https://")) for u in value
        ):
            raise ConfigError(f'{where}: {key} must be a list of broker URLs like ["http://host:4929"]')
        lists[key] = tuple(u.rstrip("/") for u in value)
    port = table.get("broker_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536):
        raise ConfigError(f"{where}: broker_port must be 0-65535 (0: any free port), not {port!r}")
    return NotifyConfig(lists["subscribe"], lists["announce"], port)


def _metrics(table: object, where: str) -> tuple[str, int]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _unknown(table, {"host", "port"}, where)
    host, port = table.get("host", "127.0.0.1"), table.get("port")
    if (
        not isinstance(host, str)
        or isinstance(port, bool)
        or not isinstance(port, int)
        or not 0 <= port < 65536
    ):
        raise ConfigError(f"{where}: port (0-65535) is required and host must be a string, e.g. port = 9108")
    return host, port
