"""Fixtures for the client tests: a published repository served by two real engine servers.

A repository with two nested catalogs (chunked, hard-linked, symlinked and empty files) is
built once per session and copied for each test (:class:`Site`), which serves the copy with two
:func:`rcds.serve.http.make_server` instances and offers helpers to publish new revisions and to
serve tampered copies. The fault-injecting server and the real Squid come from
``tests/net/conftest.py`` (loaded under another module name, so the code is shared, not copied).
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from getroutes import route, worker_route  # noqa: F401 - the fixtures, for every test here

from rcds.client.repository import Repository
from rcds.format import keys
from rcds.format import manifest as manifest_fmt
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.format.whitelist import Whitelist
from rcds.net.settings import NetSettings, Timeouts
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.serve.handler import AccessRecord
from rcds.serve.http import RepositoryServer, make_server

from clientkit import BIG, C1, C2, FILES, LINKS, template_entries
from getkit import many  # noqa: F401 - the fixture, for every test here
from testkit import NAME, SMALL_CHUNKS, Entry, load_conftest, publish

net = load_conftest("net", "rcds_net_testkit")  # RepoServer, Squid, fixtures; netkit beside it
RepoServer = net.RepoServer
Squid = net.Squid
FakeClock = net.FakeClock
assert net.FQRN == NAME

# The session Squid and the Squid factory of the network tests, shared as they are.
squid = net.squid
squid_factory = net.squid_factory

FAST = NetSettings(
    timeout=Timeouts(2.0, 2.0),
    timeout_direct=Timeouts(2.0, 2.0),
    low_speed_limit=0,
    max_retries=1,
    backoff_init=0.05,
    backoff_max=0.2,
)
"""Network settings for tests: short timeouts and back-off."""


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository directory (``public/``, ``keys/``...) with two nested catalogs."""
    root = tmp_path_factory.mktemp("client-template") / "repo"
    create_repository(root, Settings(name=NAME, **SMALL_CHUNKS))  # type: ignore[arg-type]
    s0 = Stratum0(root, NAME)
    publish(s0, template_entries(), C1)
    publish(s0, [Entry("x.txt", b"in c2\n")], C2)
    return root


class Site:
    """One test's copy of the template, served by two engine servers, plus tampering helpers."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.public = root / "public"
        self.key = root / "keys" / f"{NAME}.pub"
        self.cache_dir = work / "cache"
        self.files = FILES
        self.links = LINKS
        self.big = BIG
        self.fast = FAST
        self.requests: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._servers: list[RepositoryServer] = []
        self._fault_servers: list[Any] = []
        self._repos: list[Repository] = []
        self.servers = [self.serve_server(self.public) for _ in range(2)]
        self.urls = [s.url_for(NAME) for s in self.servers]

    # -- servers ------------------------------------------------------------------------------
    def serve_server(self, public: Path) -> RepositoryServer:
        """Start another engine server for the tree ``public``."""
        index = len(self._servers)

        def log(rec: AccessRecord) -> None:
            with self._lock:
                self.requests.append((index, rec.target.split(f"/cvmfs/{NAME}/", 1)[-1]))

        srv = make_server({NAME: public}, access_log=log)
        srv.start_background()
        self._servers.append(srv)
        return srv

    def serve(self, public: Path) -> str:
        """Serve ``public`` with a new engine server; its repository URL."""
        return self.serve_server(public).url_for(NAME)

    def fault_server(self, public: Path | None = None) -> Any:
        """A fault-injecting :class:`RepoServer` (tests/net) serving a copy of ``public``."""
        srv = RepoServer(self.work / f"fault{len(self._fault_servers)}")
        shutil.copytree(public or self.public, srv.root, dirs_exist_ok=True)
        self._fault_servers.append(srv)
        return srv

    def fetched(self, needle: str, server: int | None = None) -> int:
        """How many requests for paths containing ``needle`` the engine servers answered.

        Servers log a request just after answering it, so first wait (bounded) until the log
        has been quiet for a moment.
        """
        deadline = time.monotonic() + 2.0
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                n = len(self.requests)
            if n == seen:
                break
            seen = n
            time.sleep(0.03)
        with self._lock:
            return sum(1 for i, p in self.requests if needle in p and (server is None or i == server))

    # -- clients ------------------------------------------------------------------------------
    def open(self, urls: Sequence[str] | None = None, **kw: Any) -> Repository:
        """A client for this repository (closed at teardown); keywords go to ``open_urls``."""
        kw.setdefault("cache_dir", self.cache_dir)
        kw.setdefault("net_settings", FAST)
        kw.setdefault("probe", False)
        repo = Repository.open_urls(list(urls or self.urls), [self.key], **kw)
        self._repos.append(repo)
        return repo

    # -- publishing and tampering -------------------------------------------------------------
    @property
    def s0(self) -> Stratum0:
        """The stratum 0 of the copy."""
        return Stratum0(self.root, NAME)

    def publish(self, entries: Sequence[Entry], path: str, **kw: object) -> int:
        """Publish a new revision; returns it."""
        return publish(self.s0, entries, path, **kw)

    def copy(self, name: str) -> Path:
        """A copy of the served tree (to tamper with and serve)."""
        dst = self.work / name
        shutil.copytree(self.public, dst)
        return dst

    def manifest(self, public: Path | None = None) -> manifest_fmt.Manifest:
        """The manifest of a served tree."""
        return manifest_fmt.parse((public or self.public).joinpath(".cvmfspublished").read_bytes()).manifest

    def private_key(self, suffix: str) -> Any:
        """The repository key (``key``) or the master key (``masterkey``)."""
        path = self.root / "keys" / f"{NAME}.{suffix}"
        return keys.load_private_key(path.read_bytes(), str(path))

    def sign_whitelist(self, public: Path, expires: dt.datetime) -> None:
        """Replace the whitelist of ``public`` with one expiring at ``expires``."""
        cert = keys.load_certificate((self.root / "keys" / f"{NAME}.crt").read_bytes())
        wl = Whitelist(
            created=expires - dt.timedelta(days=30),
            expires=expires,
            repository_name=NAME,
            fingerprints=(keys.fingerprint(cert),),
        )
        (public / ".cvmfswhitelist").write_bytes(wl.sign(self.private_key("masterkey")))

    def object_path(self, public: Path, h: ContentHash, kind: ObjectKind = ObjectKind.FILE) -> Path:
        """Where an object lives in a served tree."""
        return public / h.object_name(kind)

    def chunk_hashes(self, repo: Repository, path: str) -> list[ContentHash]:
        """The object hashes of a file."""
        return [p.hash for p in repo.pieces(path)]

    def close(self) -> None:
        """Close clients and stop servers."""
        for repo in self._repos:
            repo.close()
        for srv in self._servers:
            srv.stop()
        for fs in self._fault_servers:
            fs.stop()


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Iterator[Site]:
    """A fresh copy of the template repository, served twice (see :class:`Site`)."""
    root = tmp_path / "repo"
    shutil.copytree(template, root)
    s = Site(root, tmp_path)
    yield s
    s.close()


@pytest.fixture
def clock() -> Any:
    """A monotonic clock that only moves when told to."""
    return FakeClock()


MakeRepo = Callable[..., Repository]
