"""CernVM-FS compatible client configuration: layered files, source tracking, typed settings.

Layers, later wins (reference §10.1)::

    built-in defaults
    <etc>/default.conf, <etc>/default.d/*.conf (sorted), <etc>/default.local
    <etc>/domain.d/<domain>.conf, .local        (domain = fqrn minus its first label)
    <etc>/config.d/<fqrn>.conf, .local
    extra files (in the order given)
    in-memory overrides                         (literal values, no expansion)

Files are read by :mod:`rcds.client.config.files` (no shell is run). Every key remembers the
file and line that set it, for ``rcds config show`` (:meth:`ClientConfig.explain`).

Differences from stock worth knowing: an empty value (``CVMFS_QUOTA_LIMIT=``) means "use the
built-in default" for the typed settings; the configuration repository
(``$CVMFS_CONFIG_REPOSITORY``) is not consulted; ``CVMFS_ALIEN_CACHE`` may be combined with a
managed local cache, because rcds uses the alien cache as a second level next to the local one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rcds.client.config.files import Assignment, Source, read_config_file
from rcds.client.config.names import check_fqrn
from rcds.errors import ConfigError

DEFAULT_ETC = Path("/etc/cvmfs")
BUILTIN = Source("<built-in default>")
OVERRIDE = Source("<override>")
MB = 1024 * 1024

#: Stock defaults (default.conf / code). ``CVMFS_KEYS_DIR`` defaults to ``<etc>/keys``.
BUILTIN_DEFAULTS: Mapping[str, str] = {
    "CVMFS_CACHE_BASE": "/var/lib/cvmfs",
    "CVMFS_SHARED_CACHE": "yes",
    "CVMFS_QUOTA_LIMIT": "4000",
    "CVMFS_MAX_TTL": "0",
    "CVMFS_TIMEOUT": "5",
    "CVMFS_TIMEOUT_DIRECT": "10",
    "CVMFS_MAX_RETRIES": "1",
    "CVMFS_BACKOFF_INIT": "2",
    "CVMFS_BACKOFF_MAX": "10",
    "CVMFS_PROXY_RESET_AFTER": "300",
    "CVMFS_HOST_RESET_AFTER": "1800",
}

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YES = {"yes", "on", "true", "1"}
_NO = {"no", "off", "false", "0"}


def config_file_candidates(fqrn: str | None, etc_dir: Path = DEFAULT_ETC) -> list[Path]:
    """Every file the layering reads, in order (most do not exist on a given node)."""
    files = [etc_dir / "default.conf"]
    default_d = etc_dir / "default.d"
    if default_d.is_dir():
        files += sorted(p for p in default_d.iterdir() if p.name.endswith(".conf"))
    files.append(etc_dir / "default.local")
    if fqrn is not None:
        check_fqrn(fqrn)
        if "." in fqrn:
            domain = fqrn.split(".", 1)[1]
            files += [etc_dir / "domain.d" / f"{domain}.conf", etc_dir / "domain.d" / f"{domain}.local"]
        files += [etc_dir / "config.d" / f"{fqrn}.conf", etc_dir / "config.d" / f"{fqrn}.local"]
    return files


def load_client_config(
    fqrn: str | None = None,
    *,
    etc_dir: Path = DEFAULT_ETC,
    extra_files: Sequence[Path] = (),
    overrides: Mapping[str, str] | None = None,
    strict: bool = False,
) -> ClientConfig:
    """Read the configuration layers for repository ``fqrn`` (or only the defaults if ``None``).

    Missing files are skipped, except ``extra_files``, which must exist. ``strict`` turns
    ignored shell statements (``if``, commands) into errors instead of warnings.
    """
    history: dict[str, list[Assignment]] = {}
    defaults = {**BUILTIN_DEFAULTS, "CVMFS_KEYS_DIR": str(etc_dir / "keys")}
    for key, value in defaults.items():
        history[key] = [Assignment(key, value, BUILTIN)]
    files_read: list[Path] = []
    warnings: list[str] = []
    candidates = [(p, False) for p in config_file_candidates(fqrn, etc_dir)]
    for path, required in [*candidates, *((Path(p), True) for p in extra_files)]:
        current = {k: v[-1].value for k, v in history.items()}
        parsed = read_config_file(path, current, strict=strict)
        if parsed is None:
            if required:
                raise ConfigError(f"configuration file {path} does not exist")
            continue
        files_read.append(path)
        warnings += parsed.warnings
        for a in parsed.assignments:
            history.setdefault(a.key, []).append(a)
    for key, value in (overrides or {}).items():
        if not _KEY.fullmatch(key):
            raise ConfigError(f"override key {key!r} is not a valid parameter name")
        history.setdefault(key, []).append(Assignment(key, str(value), OVERRIDE))
    return ClientConfig(fqrn, etc_dir, history, tuple(files_read), tuple(warnings))


class ClientConfig:
    """The effective configuration: each key's value plus the history of assignments that led to it."""

    def __init__(
        self,
        fqrn: str | None,
        etc_dir: Path,
        history: Mapping[str, Sequence[Assignment]],
        files_read: tuple[Path, ...] = (),
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.fqrn = fqrn
        self.etc_dir = etc_dir
        self._history = {k: tuple(v) for k, v in history.items() if v}
        self.files_read = files_read
        self.warnings = warnings

    def get(self, key: str, default: str | None = None) -> str | None:
        """The effective value of ``key``, or ``default`` if no layer sets it."""
        h = self._history.get(key)
        return h[-1].value if h else default

    def __getitem__(self, key: str) -> str:
        return self._history[key][-1].value

    def __contains__(self, key: object) -> bool:
        return key in self._history

    def keys(self) -> list[str]:
        """All keys set by any layer, sorted."""
        return sorted(self._history)

    def as_dict(self) -> dict[str, str]:
        """Key to effective value."""
        return {k: h[-1].value for k, h in sorted(self._history.items())}

    def source(self, key: str) -> Source | None:
        """Where the effective value of ``key`` was set."""
        h = self._history.get(key)
        return h[-1].source if h else None

    def history(self, key: str) -> tuple[Assignment, ...]:
        """Every assignment of ``key`` in layering order; the last one is effective."""
        return self._history.get(key, ())

    def explain(self) -> list[tuple[str, str, Source]]:
        """``(key, effective value, source)`` for every key, sorted by key."""
        return [(k, h[-1].value, h[-1].source) for k, h in sorted(self._history.items())]

    def settings(self) -> ClientSettings:
        """The typed settings the client uses; raises :class:`ConfigError` for bad values."""
        return ClientSettings.from_config(self)

    # -- typed access helpers (error messages name key, value and where it was set) --------------

    def _where(self, key: str) -> str:
        src = self.source(key)
        if src is None or src == BUILTIN:
            return "built-in default"
        return "from the overrides" if src == OVERRIDE else f"set at {src}"

    def _bad(self, key: str, value: str, what: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} ({self._where(key)}) is not {what}; fix or remove that setting")

    def _text(self, key: str) -> str | None:
        """The value, with empty meaning 'use the built-in default'."""
        value = (self.get(key) or "").strip()
        return value or BUILTIN_DEFAULTS.get(key)

    def _int(self, key: str, minimum: int, what: str) -> int:
        raw = self._text(key) or "0"
        try:
            value = int(raw, 10)
        except ValueError:
            raise self._bad(key, raw, what) from None
        if value < minimum:
            raise self._bad(key, raw, what)
        return value

    def _seconds(self, key: str) -> float:
        raw = self._text(key) or "0"
        try:
            value = float(raw)
        except ValueError:
            raise self._bad(key, raw, "a number of seconds") from None
        if not math.isfinite(value) or value < 0:
            raise self._bad(key, raw, "a non-negative number of seconds")
        return value

    def _bool(self, key: str) -> bool:
        raw = (self._text(key) or "no").lower()
        if raw in _YES or raw in _NO:
            return raw in _YES
        raise self._bad(key, raw, "yes or no")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Typed client settings built from a :class:`ClientConfig` (durations in seconds)."""

    fqrn: str
    server_urls: tuple[str, ...]
    http_proxy: str
    fallback_proxy: str
    public_keys: tuple[Path, ...]
    cache_base: Path
    cache_dir: Path
    quota_limit_mb: int
    alien_cache: Path | None
    max_ttl_minutes: int
    timeout: float
    timeout_direct: float
    max_retries: int
    backoff_init: float
    backoff_max: float
    proxy_reset_after: float
    host_reset_after: float

    @property
    def quota_bytes(self) -> int | None:
        """The cache quota in bytes, or ``None`` for an unmanaged cache (``CVMFS_QUOTA_LIMIT=-1``)."""
        return None if self.quota_limit_mb < 0 else self.quota_limit_mb * MB

    @property
    def max_ttl_seconds(self) -> int | None:
        """The TTL cap in seconds, or ``None`` when ``CVMFS_MAX_TTL`` is 0 (no cap)."""
        return self.max_ttl_minutes * 60 or None

    @classmethod
    def from_config(cls, config: ClientConfig) -> ClientSettings:
        """Validate and convert; needs ``config.fqrn``."""
        fqrn = config.fqrn
        if fqrn is None:
            raise ConfigError("client settings need a repository name (fqrn); pass one to load_client_config")
        org = fqrn.split(".", 1)[0]
        urls = tuple(
            u.strip().replace("@fqrn@", fqrn).replace("@org@", org).rstrip("/")
            for u in (config.get("CVMFS_SERVER_URL") or "").split(";")
            if u.strip()
        )
        quota = config._int("CVMFS_QUOTA_LIMIT", -1, "a size in MB (or -1 for an unmanaged cache)")
        if quota == 0:
            raise config._bad("CVMFS_QUOTA_LIMIT", "0", "a usable cache size (a positive MB count or -1)")
        base = Path(config._text("CVMFS_CACHE_BASE") or "/var/lib/cvmfs")
        explicit_dir = (config.get("CVMFS_CACHE_DIR") or "").strip()
        if explicit_dir:
            cache_dir = Path(explicit_dir)
        else:
            cache_dir = base / ("shared" if config._bool("CVMFS_SHARED_CACHE") else fqrn)
        alien = (config.get("CVMFS_ALIEN_CACHE") or "").strip()
        return cls(
            fqrn=fqrn,
            server_urls=urls,
            http_proxy=(config.get("CVMFS_HTTP_PROXY") or "").strip(),
            fallback_proxy=(config.get("CVMFS_FALLBACK_PROXY") or "").strip(),
            public_keys=_public_keys(config),
            cache_base=base,
            cache_dir=cache_dir,
            quota_limit_mb=quota,
            alien_cache=Path(alien) if alien else None,
            max_ttl_minutes=config._int("CVMFS_MAX_TTL", 0, "a non-negative number of minutes"),
            timeout=config._seconds("CVMFS_TIMEOUT"),
            timeout_direct=config._seconds("CVMFS_TIMEOUT_DIRECT"),
            max_retries=config._int("CVMFS_MAX_RETRIES", 0, "a non-negative number of retries"),
            backoff_init=config._seconds("CVMFS_BACKOFF_INIT"),
            backoff_max=config._seconds("CVMFS_BACKOFF_MAX"),
            proxy_reset_after=config._seconds("CVMFS_PROXY_RESET_AFTER"),
            host_reset_after=config._seconds("CVMFS_HOST_RESET_AFTER"),
        )


def _public_keys(config: ClientConfig) -> tuple[Path, ...]:
    """``CVMFS_PUBLIC_KEY`` (':'-separated files) if set, else every ``*.pub`` in ``CVMFS_KEYS_DIR``."""
    listed = [p.strip() for p in (config.get("CVMFS_PUBLIC_KEY") or "").split(":") if p.strip()]
    if listed:
        return tuple(Path(p) for p in listed)
    keys_dir = Path((config.get("CVMFS_KEYS_DIR") or "").strip() or config.etc_dir / "keys")
    try:
        return tuple(sorted(p for p in keys_dir.iterdir() if p.name.endswith(".pub") and p.is_file()))
    except FileNotFoundError:
        return ()
    except OSError as exc:
        where = config._where("CVMFS_KEYS_DIR")
        raise ConfigError(f"cannot list CVMFS_KEYS_DIR {keys_dir} ({where}): {exc.strerror or exc}") from None
