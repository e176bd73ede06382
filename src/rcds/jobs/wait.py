"""Job side: wait until a CID is published, then link it into the job's directory.

A worker node looks for ``<cvmfs root>/<repo>/<prefix>/<cid>`` in every candidate repository
(the job wrapper loop of rcds-today.md 3.6) when the repository is mounted there, and otherwise
reads the repository with the client library (server URLs and master keys, or the CernVM-FS
client configuration). Polls start at one second and back off to fifteen; the whole wait is
bounded. When found, the code is linked (a symbolic link to the mounted path) or, without a
mount, copied with :func:`rcds.client.get.materialize.materialize` to the requested place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rcds.client.config.names import check_fqrn
from rcds.client.config.settings import DEFAULT_ETC, load_client_config
from rcds.client.get.materialize import materialize
from rcds.client.repository import Repository
from rcds.errors import ConfigError, InputError, NotFoundError, RcdsError
from rcds.jobs.wake import Waker
from rcds.service.cid import validate_cid

log = logging.getLogger("rcds.jobs")

DEFAULT_CVMFS_ROOT = Path("/cvmfs")
DEFAULT_PREFIX = "sw"
AFTER_NOTIFY = 0.05
"""First pause (seconds) after a notification; the pauses double again from there."""


class WaitTimeoutError(NotFoundError):
    """The CID did not appear in time; the message names the CID and every place looked at."""


@dataclass(frozen=True)
class PollPolicy:
    """Poll intervals: ``start`` seconds, multiplied by ``factor`` after each poll, up to ``cap``."""

    start: float = 1.0
    factor: float = 2.0
    cap: float = 15.0

    def delays(self) -> Iterator[float]:
        """The successive sleeps between polls (endless)."""
        delay = min(self.start, self.cap)
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)


@dataclass(frozen=True)
class ClientAccess:
    """How to read repositories with the client library instead of a mount.

    ``urls``: ``http://host/cvmfs/<repo>`` (used for the repository it names) or templates
    with ``@fqrn@``. ``keys``: master public key files, or directories holding
    ``<repo>.pub``. ``config_dir``: a CernVM-FS client configuration used for repositories no
    URL names. ``cache_dir``: the client cache (default: the client library's).
    """

    urls: tuple[str, ...] = ()
    keys: tuple[Path, ...] = ()
    config_dir: Path | None = None
    cache_dir: Path | None = None

    def repositories(self) -> list[str]:
        """The repositories named by non-template URLs."""
        return [_url_repo(u) for u in self.urls if "@fqrn@" not in u]

    def open(self, repo: str) -> Repository:
        """Open ``repo``; :class:`ConfigError` if there is no way to."""
        urls = [u.replace("@fqrn@", repo) for u in self.urls if "@fqrn@" in u or _url_repo(u) == repo]
        if urls:
            keys = [k / f"{repo}.pub" if k.is_dir() else k for k in self.keys]
            keys = [k for k in keys if k.is_file()]
            if not keys:
                raise ConfigError(
                    f"no master public key for {repo}; pass --key FILE (or a directory of keys)"
                )
            return Repository.open_urls(urls, keys, fqrn=repo, cache_dir=self.cache_dir)
        if self.config_dir is not None:
            config = load_client_config(repo, etc_dir=self.config_dir)
            if not (config.get("CVMFS_SERVER_URL") or "").strip():
                raise ConfigError(f"no CVMFS_SERVER_URL for {repo} in {self.config_dir}")
            return Repository.open_name(repo, config, cache_dir=self.cache_dir)
        raise ConfigError(f"no --repo-url for {repo}")


def _url_repo(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Found:
    """Where the CID was found: ``path`` is the mounted path, or ``<repo>:<repo_path>`` via the client."""

    cid: str
    repository: str
    path: str
    repo_path: str
    via: Literal["mount", "client"]


@dataclass(frozen=True)
class WaitOutcome:
    """What :func:`wait_for_code` found and where it put the code (``linked``), after ``seconds``."""

    found: Found
    linked: Path | None
    seconds: float

    def as_json(self) -> dict[str, object]:
        """A JSON-ready mapping."""
        f = self.found
        return {
            "cid": f.cid,
            "repository": f.repository,
            "path": f.path,
            "via": f.via,
            "linked": str(self.linked) if self.linked else None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Finder:
    """Looks for one CID in the candidate repositories, keeping opened repositories between polls."""

    cid: str
    repos: Sequence[str]
    cvmfs_root: Path | None = DEFAULT_CVMFS_ROOT
    prefix: str = DEFAULT_PREFIX
    access: ClientAccess | None = None
    pushed: Callable[[str], bytes | None] | None = None
    """Gives a manifest a notification pushed for a repository (see :mod:`rcds.jobs.wake`)."""
    _open: dict[str, Repository] = field(default_factory=dict, init=False)
    _state: dict[str, str] = field(default_factory=dict, init=False)
    _no_access: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        validate_cid(self.cid)
        validate_cid(self.prefix, max_depth=8)
        if not self.repos:
            raise ConfigError("no repositories to look in; pass --repos a,b, set RCDS_REPOS or --server URL")
        for r in self.repos:
            check_fqrn(r)

    def repo_path(self) -> str:
        """The CID's path inside a repository."""
        return f"/{self.prefix}/{self.cid}"

    def look(self) -> Found | None:
        """One pass over the repositories: mounted ones by ``stat``, others through the client."""
        for repo in self.repos:
            root = self.cvmfs_root
            if root is not None and (root / repo).is_dir():
                path = root / repo / self.prefix / self.cid
                self._state[str(path)] = "mounted, not there yet"
                if path.is_dir():
                    return Found(self.cid, repo, str(path), self.repo_path(), "mount")
                continue
            if repo in self._no_access:
                continue
            if self.access is None:
                self._no_access.add(repo)
                self._state[self._unmounted(repo)] = "not mounted, and no client access given"
                continue
            found = self._look_client(repo)
            if found is not None:
                return found
        return None

    def _unmounted(self, repo: str) -> str:
        return str(self.cvmfs_root / repo) if self.cvmfs_root is not None else repo

    def _look_client(self, repo: str) -> Found | None:
        assert self.access is not None
        where = f"{repo}:{self.repo_path()} (client library)"
        try:
            r = self._open.get(repo)
            if r is None:
                r = self._open[repo] = self.access.open(repo)
            elif not self._apply_pushed(r):
                r.refresh(force=True)
            present = r.exists(self.repo_path())
        except ConfigError as exc:
            self._no_access.add(repo)
            self._state[self._unmounted(repo)] = f"not mounted, and no client access: {exc}"
            return None
        except RcdsError as exc:
            self._state[where] = f"not readable: {exc}"
            return None
        if not present:
            self._state[where] = f"revision {r.revision}, not there yet"
            return None
        return Found(self.cid, repo, f"{repo}:{self.repo_path()}", self.repo_path(), "client")

    def _apply_pushed(self, r: Repository) -> bool:
        """Switch to a pushed manifest (verified); False if there is none or it is not trustworthy."""
        raw = self.pushed(r.fqrn) if self.pushed is not None else None
        if raw is None:
            return False
        try:
            r.apply_manifest(raw)
        except RcdsError as exc:
            log.warning("notified manifest of %s not used: %s", r.fqrn, exc)
            return False
        return True

    def places(self) -> str:
        """Every place looked at with its last state, for messages."""
        return "; ".join(f"{p}: {s}" for p, s in self._state.items()) or "nowhere"

    def link(self, found: Found, dest: Path) -> Path:
        """Put the code at ``dest``: a symbolic link to a mounted path, else a materialized copy."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if found.via == "mount":
            if dest.exists() and not dest.is_symlink():
                raise InputError(
                    f"{dest} exists and is not a symbolic link; remove it or pick another --link"
                )
            tmp = dest.with_name(f".{dest.name}.rcds-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(found.path, target_is_directory=True)
            os.replace(tmp, dest)
            return dest
        if dest.is_symlink():
            dest.unlink()
        materialize(self._open[found.repository], found.repo_path, dest)
        return dest

    def close(self) -> None:
        """Close opened repositories."""
        for r in self._open.values():
            r.close()
        self._open.clear()


def wait_for_code(
    cid: str,
    repos: Sequence[str],
    *,
    timeout: float,
    link: Path | None = None,
    cvmfs_root: Path | None = DEFAULT_CVMFS_ROOT,
    prefix: str = DEFAULT_PREFIX,
    access: ClientAccess | None = None,
    poll: PollPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    notify: str | None = None,
) -> WaitOutcome:
    """Wait up to ``timeout`` seconds for ``cid`` in ``repos``, then link it to ``link`` if given.

    ``cvmfs_root`` None means: never use a mount, only the client library (``access``).
    ``notify``: a notification broker's base URL; a new revision announced there ends the
    current pause at once (its manifest is applied, verified, to the client library's view), and
    the next looks follow quickly (a mount may switch a moment after the announcement).

    Raises :class:`WaitTimeoutError` naming the CID and the places looked at.
    """
    start = clock()
    policy = poll or PollPolicy()
    finder = Finder(cid, list(repos), cvmfs_root, prefix, access)
    waker = Waker(notify, finder.repos) if notify else None
    finder.pushed = waker.take if waker is not None else None
    try:
        delays = policy.delays()
        while True:
            found = finder.look()
            if found is not None:
                log.info("found %s at %s after %.1f s", cid, found.path, clock() - start)
                linked = finder.link(found, link) if link is not None else None
                return WaitOutcome(found, linked, clock() - start)
            remaining = start + timeout - clock()
            if remaining <= 0:
                break
            pause = min(next(delays), remaining)
            if waker is None:
                sleep(pause)
            elif waker.wait(pause):
                delays = PollPolicy(start=AFTER_NOTIFY, cap=policy.cap).delays()
        raise WaitTimeoutError(
            f"CID {cid} did not appear within {timeout:g} s in {', '.join(repos)} "
            f"(looked for {prefix}/{cid}): {finder.places()}"
        )
    finally:
        if waker is not None:
            waker.close()
        finder.close()


def discover_repos(
    explicit: Sequence[str] = (),
    *,
    environ: dict[str, str] | None = None,
    server_repos: Callable[[], list[str]] | None = None,
    access: ClientAccess | None = None,
    config_dir: Path = DEFAULT_ETC,
) -> list[str]:
    """The repositories to look in: ``explicit``, else ``$RCDS_REPOS``, else the servers' config
    call, else the repositories ``access`` names, else ``CVMFS_REPOSITORIES`` of the client config.
    """
    env = os.environ if environ is None else environ

    def split(values: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(x for v in values for x in v.replace(",", " ").split()))

    repos = split(explicit) or split([env.get("RCDS_REPOS", "")])
    if not repos and server_repos is not None:
        repos = server_repos()
    if not repos and access is not None:
        repos = access.repositories()
    if not repos and any((config_dir / f).exists() for f in ("default.conf", "default.local", "default.d")):
        config = load_client_config(None, etc_dir=config_dir)
        domain = (config.get("CVMFS_DEFAULT_DOMAIN") or "").strip()
        names = split([config.get("CVMFS_REPOSITORIES") or ""])
        repos = [n if "." in n or not domain else f"{n}.{domain}" for n in names]
    if not repos:
        raise ConfigError(
            "no repositories to look in; pass --repos a,b, set RCDS_REPOS, or give --server URL "
            "(its config call lists them)"
        )
    return repos
