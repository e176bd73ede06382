"""stratum 0 -> rcds stratum 1 -> real Squid (the sample site configuration) -> rcds clients.

The stratum 1's cache headers decide what Squid keeps: objects come from Squid's cache (counted
on the stratum 1), a new revision shows through Squid no later than the manifest's max-age after
the replica has it, and many clients starting on the same new tree at once fetch about one copy
of it from the stratum 1 (``collapsed_forwarding``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rcds.client.repository import Repository
from rcds.publish.stratum0 import Stratum0
from rcds.replica.registry import add_replica
from rcds.replica.runner import ReplicaRunner
from rcds.serve.http import RepositoryServer, make_server
from rcds.testing.squid import SQUID, Squid

from replkit import Recorder, cid_entries, key_file
from testkit import publish

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(SQUID is None, reason="squid is not installed (apt-get install squid)"),
]

SITE_CONF = Path(__file__).resolve().parents[2] / "examples" / "squid" / "site-squid.conf"
MAX_AGE = 2  # the test replica's manifest max-age (production: 61)


@dataclass
class Path3:
    s0: Stratum0
    runner: ReplicaRunner
    s1: RepositoryServer
    s1_log: Recorder
    squid: Squid
    tmp: Path

    def client(self, name: str) -> Repository:
        return Repository.open_urls(
            [self.s1.url_for(self.s0.name)],
            [key_file(self.s0)],
            proxies=self.squid.url,
            cache_dir=self.tmp / "cache" / name,
            probe=False,
        )

    def s1_gets(self, needle: str) -> int:
        """Answered GETs for targets containing ``needle`` (after the server's log has caught up:
        a record is appended only after the answer went out)."""
        last, stable_since = -1, time.monotonic()
        while True:
            with self.s1_log.lock:
                n = sum(1 for r in self.s1_log.records if needle in r.target and r.status == 200)
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                return n
            time.sleep(0.05)


@pytest.fixture
def path3(repo: Stratum0, tmp_path: Path) -> Iterator[Path3]:
    publish(repo, cid_entries("a", 12, size=20_000), "/sw/g/a")
    with make_server({repo.name: repo.layout.public}) as s0_server:
        s0_server.start_background()
        spec = add_replica(tmp_path / "s1", repo.name, s0_server.url_for(repo.name), key_file(repo)).spec()
        log = Recorder()
        s1 = make_server({repo.name: spec.dest}, root_max_age=MAX_AGE, access_log=log)
        s1.start_background()
        squid = Squid.from_file(SITE_CONF, {"minimum_expiry_time": "minimum_expiry_time 0 seconds"})
        runner = ReplicaRunner([spec], interval=3600)
        try:
            runner.start()
            runner.pull_now(repo.name, timeout=30)
            yield Path3(repo, runner, s1, log, squid, tmp_path)
        finally:
            runner.stop()
            squid.stop()
            s1.stop()


def read_tree(repo: Repository, top: str) -> int:
    total = 0
    for d, _dirs, files in repo.walk(top):
        for f in files:
            total += len(repo.read_bytes(f"{d.rstrip('/')}/{f}"))
    return total


def test_objects_come_from_squid_and_a_new_revision_shows_within_the_max_age(path3: Path3) -> None:
    p = path3
    with p.client("one") as one, p.client("two") as two:
        assert read_tree(one, "/sw/g/a") > 12 * 20_000
        objects_after_first = p.s1_gets("/data/")
        assert objects_after_first >= 13  # 12 files and the catalogs, all through Squid
        assert read_tree(two, "/sw/g/a") == read_tree(one, "/sw/g/a")
        assert p.s1_gets("/data/") == objects_after_first  # the second client: all from Squid
        hits = [line for line in p.squid.log_lines() if "/data/" in line and "HIT/200" in line]
        assert len(hits) >= 13

        old = one.revision
        new = publish(p.s0, cid_entries("b", 12, size=20_000), "/sw/g/b")
        p.runner.pull_now(p.s0.name, timeout=30)
        replica_has_it = time.monotonic()
        while True:  # the manifest Squid holds may be up to MAX_AGE old: never older
            if one.refresh(force=True):
                break
            assert one.revision == old
            assert time.monotonic() - replica_has_it < MAX_AGE + 1.5, "stale manifest past its max-age"
            time.sleep(0.05)
        assert one.revision == new
        assert two.refresh(force=True) and two.revision == new
        before = p.s1_gets("/data/")
        read_tree(one, "/sw/g/b")
        fetched_new = p.s1_gets("/data/") - before
        read_tree(two, "/sw/g/b")
        assert p.s1_gets("/data/") == before + fetched_new  # again one fetch per object
        assert fetched_new >= 12
        # Only the manifest (and the whitelist) went back to the stratum 1 more than once.
        per_target: dict[str, int] = {}
        with p.s1_log.lock:
            for r in p.s1_log.records:
                per_target[r.target] = per_target.get(r.target, 0) + 1
        assert {t for t, n in per_target.items() if n > 1} <= {
            f"/cvmfs/{p.s0.name}/.cvmfspublished",
            f"/cvmfs/{p.s0.name}/.cvmfswhitelist",
        }


@pytest.mark.parametrize("clients", [20])
def test_many_clients_on_a_new_tree_fetch_about_one_copy_from_the_stratum1(
    path3: Path3, clients: int
) -> None:
    p = path3
    new = publish(p.s0, cid_entries("fan", 30, size=30_000), "/sw/g/fan")
    p.runner.pull_now(p.s0.name, timeout=30)
    time.sleep(MAX_AGE + 0.2)  # let any cached old manifest expire: everybody starts on the new tree
    p.s1_log.take()
    barrier = threading.Barrier(clients)
    errors: list[BaseException] = []
    sizes: list[int] = []

    def job(i: int) -> None:
        try:
            barrier.wait(30)
            with p.client(f"fan{i}") as c:
                assert c.revision == new
                sizes.append(read_tree(c, "/sw/g/fan"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[0]
    assert len(sizes) == clients and len(set(sizes)) == 1
    sent = p.s1_log.bytes_sent("/data/")
    # One copy: every distinct object the clients needed (catalogs on the way, the CID's files).
    prefix = f"/cvmfs/{p.s0.name}/"
    distinct = {r.target[len(prefix) :] for r in p.s1_log.records if "/data/" in r.target}
    one_copy = sum((p.tmp / "s1" / p.s0.name / n).stat().st_size for n in distinct)
    assert one_copy >= 30 * 30_000  # random, incompressible files
    assert one_copy <= sent <= 1.25 * one_copy, (sent, one_copy)
