"""Fail-over and refusal of bad data with real servers and a real Squid on loopback.

Each fault is served by one host while a good host serves the same repository: the client must
detect it, get the data from the good host and blame the bad one. With only the bad host left it
must fail with a clear error, return nothing and cache nothing.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rcds.client.repository import Repository
from rcds.errors import IntegrityError, NetworkError
from rcds.format import keys
from rcds.format.hashes import ObjectKind
from rcds.net.settings import Timeouts

from testkit import NAME, Entry

if TYPE_CHECKING:
    from conftest import Site, Squid

pytestmark = pytest.mark.timeout(90)

C1 = "/sw/g/c1"
HELLO = f"{C1}/a/hello.txt"
BIG = f"{C1}/a/big.bin"


def host_state(repo: Repository, url: str) -> Any:
    return next(ep for ep in repo.info().endpoints if ep.role == "host" and ep.url == url)


def cached(repo: Repository, path_hashes: list[Any], kind: ObjectKind = ObjectKind.PARTIAL) -> bool:
    return any(repo.cache.contains(h, kind) for h in path_hashes)


@pytest.mark.parametrize("via", ["DIRECT", "squid"])
def test_reads_direct_and_through_squid(site: Site, squid: Squid, via: str, tmp_path: Path) -> None:
    proxies = squid.url if via == "squid" else "DIRECT"
    served = []
    for i in range(2):  # two clients with their own caches: the second one may hit Squid's cache
        repo = site.open(proxies=proxies, cache_dir=tmp_path / f"cache{i}")
        for path, data in site.files.items():
            assert repo.read_bytes(path) == data
        served.append(site.fetched("data/"))
    assert served[0] > 10
    if via == "squid":
        hello = site.chunk_hashes(repo, HELLO)[0]
        lines = squid.wait_logged(hello.object_name(), 2)
        assert len(lines) == 2 and "HIT" in lines[1]
        assert served[1] == served[0]  # the second client was served by Squid alone
    else:
        assert served[1] == 2 * served[0]


def test_host_killed_mid_transfer(site: Site) -> None:
    bad = site.fault_server()
    probe = site.open()
    chunk = site.chunk_hashes(probe, BIG)[3]
    name = chunk.object_name(ObjectKind.PARTIAL)
    bad.fail("stall", name, seconds=30)
    repo = site.open([bad.base, site.urls[0]], cache_dir=site.work / "c2")

    def killer() -> None:
        deadline = time.monotonic() + 20
        while bad.count(name) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        for conn in list(bad._conns):  # dies with the half-sent body on the wire
            conn.shutdown(socket.SHUT_RDWR)
        bad.stop()

    t = threading.Thread(target=killer)
    t.start()
    t0 = time.monotonic()
    assert repo.read_bytes(BIG) == site.big
    t.join()
    assert time.monotonic() - t0 < 15
    assert bad.count(name) == 1 and site.fetched(name) == 1
    state = host_state(repo, bad.base)
    assert state.state == "failed" and not state.current
    assert repo.read_bytes(HELLO) == site.files[HELLO]  # later reads go to the good host


def test_proxy_killed_fails_over_to_the_next_proxy_then_direct(
    site: Site, squid_factory: Any, tmp_path: Path
) -> None:
    p1, p2 = squid_factory(), squid_factory()
    repo = site.open(proxies=f"{p1.url};{p2.url};DIRECT", cache_dir=tmp_path / "c")
    assert repo.read_bytes(HELLO) == site.files[HELLO]
    assert p1.wait_logged(".cvmfspublished")
    p1.stop()
    assert repo.read_bytes(f"{C1}/b/c/d.txt") == b"deep\n"
    assert p2.wait_logged("data/")
    p2.stop()
    before = site.fetched("data/")
    assert repo.read_bytes(f"{C1}/a/run.sh") == site.files[f"{C1}/a/run.sh"]
    assert site.fetched("data/") == before + 1  # DIRECT
    proxies = {ep.url: ep for ep in repo.info().endpoints if ep.role == "proxy"}
    assert proxies[p1.url].state == "failed" and proxies[p2.url].state == "failed"
    assert proxies["DIRECT"].current


def test_corrupted_object(site: Site) -> None:
    probe = site.open()
    h = site.chunk_hashes(probe, HELLO)[0]
    bad_tree = site.copy("corrupt")
    obj = site.object_path(bad_tree, h)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    bad = site.serve(bad_tree)

    repo = site.open([bad, site.urls[0]], cache_dir=site.work / "c2")
    assert repo.read_bytes(HELLO) == site.files[HELLO]
    state = host_state(repo, bad)
    assert state.state == "failed" and "bad data" in (state.last_error or "")
    assert site.fetched(h.object_name()) >= 3  # twice from the bad host (no-cache retry), once good

    only_bad = site.open([bad], cache_dir=site.work / "c3")
    with pytest.raises(IntegrityError, match="corrupt data"):
        only_bad.read_bytes(HELLO)
    assert not only_bad.cache.contains(h, ObjectKind.FILE)
    assert only_bad.read_bytes(f"{C1}/b/c/d.txt") == b"deep\n"  # other objects are fine


def test_wrong_manifest_signature(site: Site) -> None:
    bad_tree = site.copy("badsig")
    forged = site.manifest(bad_tree).sign(keys.generate_key())
    (bad_tree / ".cvmfspublished").write_bytes(forged)
    bad = site.serve(bad_tree)
    repo = site.open([bad, site.urls[0]])
    assert repo.read_bytes(HELLO) == site.files[HELLO]
    assert "signature" in (host_state(repo, bad).last_error or "")
    with pytest.raises(IntegrityError, match="signature does not match"):
        site.open([bad], cache_dir=site.work / "c2")
    # A manifest of another repository, properly signed, is refused as well.
    other_tree = site.copy("othername")
    renamed = site.manifest(other_tree).evolve(repository_name="other.example.org")
    (other_tree / ".cvmfspublished").write_bytes(renamed.sign(site.private_key("key")))
    with pytest.raises(IntegrityError, match=r"is for repository 'other\.example\.org'"):
        site.open([site.serve(other_tree)], cache_dir=site.work / "c3")


def test_expired_whitelist(site: Site) -> None:
    bad_tree = site.copy("expired")
    site.sign_whitelist(bad_tree, dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    bad = site.serve(bad_tree)
    repo = site.open([bad, site.urls[0]])
    assert repo.revision == 2
    assert "expired" in (host_state(repo, bad).last_error or "")
    with pytest.raises(IntegrityError, match="expired"):
        site.open([bad], cache_dir=site.work / "c2")
    # The client's clock decides: the good whitelist too is refused once it is past its expiry.
    with pytest.raises(IntegrityError, match="expired"):
        site.open(now=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=400), cache_dir=site.work / "c3")


def test_stale_manifest_is_a_refused_rollback(site: Site, clock: Any) -> None:
    stale_tree = site.copy("stale")  # revision 2
    site.publish([Entry("new.txt", b"three\n")], "/sw/g/c3")  # revision 3 on the good hosts
    stale = site.serve(stale_tree)
    repo = site.open(clock=clock)
    assert repo.revision == 3  # the breadcrumb now says 3
    # A client preferring the stale replica gets revision 3 from the good host anyway.
    other = site.open([stale, site.urls[0]])
    assert other.revision == 3
    assert "rollback" in (host_state(other, stale).last_error or "")
    with pytest.raises(IntegrityError, match="rollback"):
        site.open([stale])
    # A mounted client whose only server turned stale stays on its revision.
    mounted = site.open([site.urls[1]], clock=clock)
    assert mounted.read_bytes("/sw/g/c3/new.txt") == b"three\n"
    site.servers[1].remove_repository(NAME)
    site.servers[1].add_repository(NAME, stale_tree)
    clock.advance(1000)
    assert mounted.refresh() is False
    assert mounted.revision == 3 and mounted.offline
    assert "rollback" in (mounted.last_error or "")
    assert mounted.read_bytes("/sw/g/c3/new.txt") == b"three\n"  # from the cache


def test_truncated_body(site: Site) -> None:
    bad = site.fault_server()
    probe = site.open()
    h = site.chunk_hashes(probe, f"{C1}/b/c/d.txt")[0]
    bad.fail("truncate", h.object_name())
    repo = site.open([bad.base, site.urls[0]], cache_dir=site.work / "c2")
    assert repo.read_bytes(f"{C1}/b/c/d.txt") == b"deep\n"
    assert "short transfer" in (host_state(repo, bad.base).last_error or "")
    only_bad = site.open([bad.base], cache_dir=site.work / "c3")
    with pytest.raises(NetworkError, match="short transfer"):
        only_bad.read_bytes(f"{C1}/b/c/d.txt")
    assert not only_bad.cache.contains(h, ObjectKind.FILE)


def test_stalled_body(site: Site) -> None:
    quick = site.fast._replace(timeout_direct=Timeouts(1.0, 1.0), max_retries=0)
    bad = site.fault_server()
    probe = site.open()
    chunk = site.chunk_hashes(probe, BIG)[1]
    bad.fail("stall", chunk.object_name(ObjectKind.PARTIAL), seconds=20)
    repo = site.open([bad.base, site.urls[0]], cache_dir=site.work / "c2", net_settings=quick)
    t0 = time.monotonic()
    assert repo.read_bytes(BIG) == site.big
    assert time.monotonic() - t0 < 10
    assert "stalled" in (host_state(repo, bad.base).last_error or "")
    only_bad = site.open([bad.base], cache_dir=site.work / "c3", net_settings=quick)
    with pytest.raises(NetworkError, match="stalled"):
        only_bad.read_bytes(BIG)
    assert not only_bad.cache.contains(chunk, ObjectKind.PARTIAL)
