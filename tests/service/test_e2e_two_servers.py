"""End to end on loopback: two servers with real TLS, each replicating the other.

Publish through the API with a grid proxy, see the CID with the client library (from the owning
server and from the partner's replica) and with ``rcds wait``; ``exists`` answers for all
repositories on both servers; kill one server and keep publishing through the other.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

from rcds.cli.main import main as rcds_main
from rcds.client.repository import Repository
from rcds.errors import LockedError
from rcds.replica.snapshot import SnapshotResult
from rcds.service.config import ServiceConfig
from rcds.service.core import init_repositories
from rcds.service.runner import ServiceThread
from rcds.testing.processes import free_port

import pki
import servicekit as kit

A_REPOS = ("user1.example.org", "user2.example.org")
B_REPOS = ("user3.example.org", "user4.example.org")
ALL = A_REPOS + B_REPOS


@dataclass
class Site:
    """One server's configuration, its running service and the keys of its repositories."""

    name: str
    config: ServiceConfig
    keys: Path  # this server's repository keys, <fqrn>.pub
    thread: ServiceThread | None = None

    @property
    def st(self) -> ServiceThread:
        assert self.thread is not None
        return self.thread

    def start(self) -> ServiceThread:
        self.thread = ServiceThread(self.config)
        return self.thread

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    def repo_url(self, fqrn: str) -> str:
        return f"http://127.0.0.1:{self.config.serve.port}/cvmfs/{fqrn}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, ca: pki.CA) -> kit.Pki:
    return kit.Pki.create(tmp_path_factory.mktemp("pki"), ca)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, tls: kit.Pki) -> Iterator[dict[str, Site]]:
    base = tmp_path_factory.mktemp("e2e")
    ports = {k: free_port() for k in ("a_api", "a_repo", "b_api", "b_repo")}
    keys = {"a": base / "a-keys", "b": base / "b-keys"}

    def cfg(me: str, other: str, repos: tuple[str, ...]) -> ServiceConfig:
        return kit.config(
            base / me,
            repositories=repos,
            listen_port=ports[f"{me}_api"],
            serve_port=ports[f"{me}_repo"],
            tables=tls.tls_tables()
            + "[stamps]\nflush_interval = 1\n"
            + f'[replica]\npartner_url = "https://127.0.0.1:{ports[f"{other}_api"]}"\n'
            f'partner_repository_url = "http://127.0.0.1:{ports[f"{other}_repo"]}/cvmfs/@fqrn@"\n'
            f'partner_keys_dir = "{keys[other]}"\npull_interval = 2\n',
        )

    out = {
        "a": Site("a", cfg("a", "b", A_REPOS), keys["a"]),
        "b": Site("b", cfg("b", "a", B_REPOS), keys["b"]),
    }
    for site in out.values():  # create the repositories, hand their public keys to the partner
        init_repositories(site.config)
        site.keys.mkdir()
        for fqrn in site.config.repositories:
            shutil.copy(site.config.state_dir / fqrn / "keys" / f"{fqrn}.pub", site.keys / f"{fqrn}.pub")
    out["a"].start()
    out["b"].start()
    try:
        yield out
    finally:
        for site in out.values():
            site.stop()


def files_of(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def read_with_client(urls: list[str], key: Path, cid: str, cache: Path) -> dict[str, bytes]:
    """What the client library sees of ``/sw/<cid>`` (empty if it is not there)."""
    with Repository.open_urls(urls, [key], cache_dir=cache) as repo:
        if not repo.exists(f"/sw/{cid}"):
            return {}
        out = {}
        for top, _dirs, names in repo.walk(f"/sw/{cid}"):
            for n in names:
                out[f"{top}/{n}"[len(f"/sw/{cid}/") :]] = repo.read_bytes(f"{top}/{n}")
        assert out.pop(".cvmfscatalog") == b""  # each tarball is its own nested catalog, as today
        return out


def pull_now(site: Site, timeout: float = 30.0) -> None:
    """Replicate the partner's repositories now, as the test's next step needs them.

    The service pulls by itself too (every 2 s here): while that pull holds a replica, this one
    gets ``LockedError`` for it; then pull again once that pull is through (bounded), so that
    what follows sees every partner repository.
    """
    deadline = time.monotonic() + timeout
    while True:
        results = site.st.service.partner.pull()
        errors = {name: r for name, r in results.items() if not isinstance(r, SnapshotResult)}
        locked = all(isinstance(e, LockedError) for e in errors.values())
        if not errors or not locked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not errors, errors


def published_repo(api: kit.Api, cid: str) -> str:
    st = api.wait_status(cid)
    assert st.text.startswith("PUBLISHED:/cvmfs/"), st.text
    return st.text.split("/")[2]


@pytest.mark.timeout(120)
def test_publish_and_see_it_everywhere(sites: dict[str, Site], tls: kit.Pki, tmp_path: Path) -> None:
    a, b = sites["a"], sites["b"]
    alice_a = kit.Api(a.st.url, ssl_context=tls.context(pki.proxy(tls.alice), "alice-a"))
    alice_b = kit.Api(b.st.url, ssl_context=tls.context(pki.proxy(tls.alice), "alice-b"))
    data = kit.tarball(
        {"bin/analysis": b"#!/bin/sh\necho analysis\n", "lib/data.bin": bytes(range(256)) * 300}
    )
    cid = kit.cid_of(data)

    assert alice_a.get("exists", cid).text == "MISSING\n"
    assert alice_a.publish(cid, data).text == "OK\n"
    repo = published_repo(alice_a, cid)
    assert repo in A_REPOS
    path = f"/cvmfs/{repo}/sw/{cid}"
    assert alice_a.get("exists", cid).text == f"PRESENT:{path}\n"

    # the client library reads it from A's repository server
    key = a.keys / f"{repo}.pub"
    assert read_with_client([a.repo_url(repo)], key, cid, tmp_path / "cache1") == files_of(data)

    # B replicates A: its exists answers for A's repositories too, and it serves the replica
    pull_now(b)
    assert alice_b.get("exists", cid).text == f"PRESENT:{path}\n"
    # ... and announces the replicated revision on its own notification broker
    broker_b = b.st.service.broker
    assert broker_b is not None

    def announced_by_b() -> bool:
        replica = (b.st.service.partner.dir / repo / ".cvmfspublished").read_bytes()
        last = broker_b.last(repo)
        return last is not None and last.manifest == replica

    assert kit.wait_until(announced_by_b, 10)
    assert alice_b.get("config").text == "repos:" + ",".join(B_REPOS + A_REPOS) + "\n"
    pull_now(a)
    assert alice_a.get("config").text == "repos:" + ",".join(ALL) + "\n"
    assert read_with_client([b.repo_url(repo)], key, cid, tmp_path / "cache2") == files_of(data)
    # publishing it again through B finds it in A's repository
    assert alice_b.publish(cid, data).text == f"PRESENT:{path}\n"

    # rcds wait finds it through the client library
    link = tmp_path / "job" / "code"
    link.parent.mkdir()
    rc = rcds_main(
        ["wait", cid, "--repos", ",".join(ALL), "--cvmfs-root", str(tmp_path / "no-cvmfs"),
         "--repo-url", f"http://127.0.0.1:{a.config.serve.port}/cvmfs/@fqrn@",
         "--key", str(a.keys), "--cache", str(tmp_path / "cache3"), "--timeout", "30", "--link", str(link)]
    )  # fmt: skip
    assert rc == 0
    assert (link / "bin" / "analysis").read_bytes() == b"#!/bin/sh\necho analysis\n"
    alice_a.close()
    alice_b.close()


@pytest.mark.timeout(120)
def test_kill_one_server_and_keep_publishing(sites: dict[str, Site], tls: kit.Pki, tmp_path: Path) -> None:
    a, b = sites["a"], sites["b"]
    ctx = tls.context(pki.proxy(tls.alice), "alice-failover")
    token = tls.token(groups=["/dune"])
    before = kit.tarball(seed="published before the failure")
    cid0 = kit.cid_of(before)
    api_a = kit.Api(a.st.url, ssl_context=ctx)
    assert api_a.publish(cid0, before).text == "OK\n"
    repo0 = published_repo(api_a, cid0)
    pull_now(b)
    api_a.close()

    a.stop()  # server A dies
    api_a = kit.Api(f"https://127.0.0.1:{a.config.listen.port}", ssl_context=ctx)
    with pytest.raises(urllib3.exceptions.HTTPError):
        api_a.get("ping")
    api_a.close()

    api_b = kit.Api(b.st.url, ssl_context=tls.context(), token=token)  # a token client this time
    published = []
    for i in range(3):
        data = kit.tarball(seed=f"while A is down {i}")
        cid = kit.cid_of(data)
        assert api_b.publish(cid, data).text == "OK\n"
        repo = published_repo(api_b, cid)
        assert repo in B_REPOS
        published.append((cid, repo, data))
        got = read_with_client([b.repo_url(repo)], b.keys / f"{repo}.pub", cid, tmp_path / f"c{i}")
        assert got == files_of(data)
    # what A published before it died is still found through B, and readable from B's replica,
    # also by a client that lists A first
    assert api_b.get("exists", cid0).text == f"PRESENT:/cvmfs/{repo0}/sw/{cid0}\n"
    assert api_b.get("update", cid0).text.startswith("PRESENT:")
    got = read_with_client(
        [a.repo_url(repo0), b.repo_url(repo0)], a.keys / f"{repo0}.pub", cid0, tmp_path / "f"
    )
    assert got == files_of(before)

    # A comes back on the same directories and catches up with B
    a.start()
    pull_now(a)
    api_a = kit.Api(a.st.url, ssl_context=ctx)
    for cid, repo, _ in published:
        assert api_a.get("exists", cid).text == f"PRESENT:/cvmfs/{repo}/sw/{cid}\n"
    assert api_a.get("exists", cid0).text == f"PRESENT:/cvmfs/{repo0}/sw/{cid0}\n"
    j = api_a.get("config", headers={"Accept": "application/json"}).json()
    assert j == {"repos": list(ALL), "prefix": "sw"}
    assert (
        json.loads(api_b.get("status", published[0][0], headers={"Accept": "application/json"}).text)["state"]
        == "published"
    )
    api_a.close()
    api_b.close()
