"""The mount's settings from the CernVM-FS style client configuration, and opening repositories.

Read on top of what the client reads (``CVMFS_SERVER_URL``, proxies, keys, cache, timeouts):

* ``CVMFS_KCACHE_TIMEOUT`` (seconds, default 60): how long the kernel keeps entries and
  attributes without asking again;
* ``CVMFS_CLAIM_OWNERSHIP`` (default yes, as stock): show every entry as owned by the user
  running the mount; ``no`` shows the catalog's uid/gid;
* ``CVMFS_AUTO_UPDATE`` (default yes): ``no`` stays on the revision mounted first;
* ``CVMFS_MAX_TTL`` (minutes) caps the repository's TTL, as in the client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rcds.client.config.settings import DEFAULT_ETC, ClientConfig, load_client_config
from rcds.client.fetch.notifications import notification_server
from rcds.client.repository import Repository
from rcds.errors import ConfigError
from rcds.mount.inodes import InodeSpace
from rcds.mount.repomount import RepoMount

DEFAULT_KCACHE = 60.0


@dataclass(frozen=True)
class MountOptions:
    """How repositories are found and shown.

    ``overrides`` are configuration keys set on the command line (``--server`` and so on);
    ``ttl`` replaces the repositories' TTL in seconds (None: the catalog's, capped by
    ``CVMFS_MAX_TTL``); ``shared`` mounts several repositories under one directory.
    """

    config_dir: Path = DEFAULT_ETC
    overrides: Mapping[str, str] | None = None
    cache_dir: Path | None = None
    ttl: float | None = None
    shared: bool = False

    def config(self, fqrn: str | None) -> ClientConfig:
        """The configuration of ``fqrn`` (``DIRECT`` when no proxy is set, like the other commands)."""
        overrides = dict(self.overrides or {})
        config = load_client_config(fqrn, etc_dir=self.config_dir, overrides=overrides)
        if not (config.get("CVMFS_HTTP_PROXY") or "").strip():
            overrides["CVMFS_HTTP_PROXY"] = "DIRECT"
            config = load_client_config(fqrn, etc_dir=self.config_dir, overrides=overrides)
        return config

    def kcache(self) -> float:
        """``CVMFS_KCACHE_TIMEOUT`` from the default layers."""
        config = self.config(None)
        raw = (config.get("CVMFS_KCACHE_TIMEOUT") or "").strip()
        if not raw:
            return DEFAULT_KCACHE
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ConfigError(f"CVMFS_KCACHE_TIMEOUT={raw!r} is not a number of seconds; fix that setting")
        return value

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) shown for every entry, or None to show the catalog's."""
        config = self.config(None)
        claim = config._bool("CVMFS_CLAIM_OWNERSHIP") if "CVMFS_CLAIM_OWNERSHIP" in config else True
        return (os.getuid(), os.getgid()) if claim else None

    def open(self, fqrn: str) -> RepoMount:
        """Open repository ``fqrn`` (verified) for the mount; :class:`ConfigError` if it is not
        configured (no server or no key)."""
        config = self.config(fqrn)
        if not (config.get("CVMFS_SERVER_URL") or "").strip():
            raise ConfigError(
                f"no server known for {fqrn}: pass --server http://HOST/cvmfs/{fqrn} or set CVMFS_SERVER_URL "
                f"in {self.config_dir}/config.d/{fqrn}.conf"
            )
        auto = config._bool("CVMFS_AUTO_UPDATE") if "CVMFS_AUTO_UPDATE" in config else True
        # the mount switches revisions itself (RcdsOperations.revision_loop), to invalidate the
        # kernel's caches right after
        repo = Repository.open_name(
            fqrn, config, cache_dir=self.cache_dir, auto_update=False, ttl_override=self.ttl
        )
        return RepoMount(
            repo,
            InodeSpace(fqrn, shared=self.shared),
            owner=self.owner(),
            auto_update=auto,
            notification_server=notification_server(config),
        )
