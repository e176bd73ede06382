"""``rcds replica add / snapshot / list / gc`` on real loopback servers, stock and own upstreams."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.cli.main import main
from rcds.format.hashes import ObjectKind
from rcds.publish.stratum0 import Stratum0
from rcds.replica.gc import collect_replica
from rcds.replica.registry import SETTINGS, add_replica, load_replica
from rcds.replica.replicator import Replicator
from rcds.replica.snapshot import served_roots
from rcds.serve.http import RepositoryServer, make_server
from rcds.storage.local import LocalStore

from replkit import assert_closed, cid_entries, key_file, revision_of, verify_dir
from testkit import publish

pytestmark = pytest.mark.timeout(120)

STOCK = Path("/work/shared/fixtures/stock-cvmfs")


@pytest.fixture
def served(repo: Stratum0) -> Iterator[tuple[Stratum0, RepositoryServer]]:
    publish(repo, cid_entries("a", 8), "/sw/g/a")
    with make_server({repo.name: repo.layout.public}) as server:
        server.start_background()
        yield repo, server


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_add_refuses_bad_input_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "s1"
    not_a_key = tmp_path / "key.pub"
    not_a_key.write_text("hello\n")
    assert (
        run(
            "replica",
            "add",
            "nodots",
            "--upstream",
            "http://h/cvmfs/nodots",
            "--key",
            not_a_key,
            "--root",
            root,
        )
        == 2
    )
    assert "not a repository name" in capsys.readouterr().err
    assert (
        run("replica", "add", "x.example.org", "--upstream", "ftp://h/x", "--key", not_a_key, "--root", root)
        == 2
    )
    assert "http://" in capsys.readouterr().err
    code = run(
        "replica",
        "add",
        "x.example.org",
        "--upstream",
        "http://h/cvmfs/x.example.org",
        "--key",
        not_a_key,
        "--root",
        root,
    )
    assert code != 0
    assert not (root / "x.example.org").exists()
    assert run("replica", "snapshot", "x.example.org", "--root", root) == 5
    assert "rcds replica add" in capsys.readouterr().err


@pytest.mark.parametrize(("fqrn", "revision"), [("stock.example.org", 2), ("shake.example.org", 1)])
def test_stock_repository_replicated_then_chained_to_a_second_stratum1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fqrn: str, revision: int
) -> None:
    key = STOCK / f"{fqrn}.pub"
    with make_server({fqrn: STOCK / fqrn}) as s0:
        s0.start_background()
        first = tmp_path / "s1a"
        assert run("replica", "add", fqrn, "--upstream", s0.url_for(fqrn), "--key", key, "--root", first) == 0
        assert run("replica", "snapshot", fqrn, "--root", first) == 0
        assert f"{fqrn}: revision {revision}: 3 catalogs" in capsys.readouterr().out
    replica = first / fqrn
    assert (replica / ".cvmfspublished").read_bytes() == (STOCK / fqrn / ".cvmfspublished").read_bytes()
    assert (replica / ".cvmfs_master_replica").exists()  # another stratum 1 may replicate from here
    stamp = (replica / ".cvmfs_last_snapshot").read_text()
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d UTC \d{4}\n", stamp)
    assert verify_dir(replica, fqrn, key).catalogs == 3
    # A second stratum 1 replicating the first one (upstream = another stratum 1).
    with make_server({fqrn: replica}) as s1:
        s1.start_background()
        second = tmp_path / "s1b"
        assert (
            run("replica", "add", fqrn, "--upstream", s1.url_for(fqrn), "--key", key, "--root", second) == 0
        )
        assert run("replica", "snapshot", fqrn, "--root", second) == 0
        # again: nothing new, nothing fetched
        assert run("replica", "snapshot", fqrn, "--root", second) == 0
    out = capsys.readouterr().out
    assert "0 catalogs and 0 objects fetched (0 B), 1 catalogs already held" in out
    assert set(LocalStore(second / fqrn).list_objects()) == set(LocalStore(replica).list_objects())
    assert run("replica", "list", "--root", second) == 0
    assert f"{fqrn}\trevision {revision}\t" in capsys.readouterr().out
    assert load_replica(second, fqrn).upstream.endswith(f"/cvmfs/{fqrn}")
    assert (second / fqrn / SETTINGS).exists()


def test_a_forged_upstream_is_refused_with_exit_code_3(
    served: tuple[Stratum0, RepositoryServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s0, _ = served
    forged = tmp_path / "forged"
    shutil.copytree(s0.layout.public, forged)
    published = bytearray((forged / ".cvmfspublished").read_bytes())
    published[-5] ^= 0xFF  # break the signature
    (forged / ".cvmfspublished").write_bytes(bytes(published))
    with make_server({s0.name: forged}) as bad:
        bad.start_background()
        root = tmp_path / "s1"
        assert (
            run(
                "replica",
                "add",
                s0.name,
                "--upstream",
                bad.url_for(s0.name),
                "--key",
                key_file(s0),
                "--root",
                root,
            )
            == 0
        )
        assert run("replica", "snapshot", s0.name, "--root", root) == 3
    assert "signature" in capsys.readouterr().err
    assert not (root / s0.name / ".cvmfspublished").exists()


def test_replica_gc_after_the_upstream_gc_keeps_the_served_revisions(
    served: tuple[Stratum0, RepositoryServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s0, server = served
    root = tmp_path / "s1"
    fqrn = s0.name
    assert (
        run("replica", "add", fqrn, "--upstream", server.url_for(fqrn), "--key", key_file(s0), "--root", root)
        == 0
    )
    replica = root / fqrn
    store = LocalStore(replica)

    def snap() -> None:
        assert run("replica", "snapshot", fqrn, "--root", root) == 0

    snap()  # revision with /sw/g/a
    with_a = served_roots(replica)[-1]
    a_objects = set(store.list_objects())
    # Three upstream revisions between two pulls: b, c, then a removed.
    publish(s0, cid_entries("b", 4), "/sw/g/b")
    publish(s0, cid_entries("c", 4), "/sw/g/c")
    s0.remove("/sw/g/a")
    snap()
    assert len(served_roots(replica)) == 2
    s0.gc(keep_revisions=1)  # the upstream drops /sw/g/a

    # Keep 2: the revision clients may still be on (with /sw/g/a) stays complete and readable,
    # although it is not the current root's previous_revision.
    result = collect_replica(replica, keep_revisions=2)
    assert result.revisions_kept == 2 and result.objects_deleted == 0
    assert a_objects <= set(store.list_objects())
    assert_closed(store, tmp_path)
    # Keep 1: what only the old revision needed goes, catalogs included; the replica verifies.
    assert run("replica", "gc", fqrn, "--root", root, "--keep-revisions", "1") == 0
    assert "kept 1 revisions" in capsys.readouterr().out
    assert not store.has(with_a.object_name(ObjectKind.CATALOG))
    assert set(store.list_objects()) == set(LocalStore(s0.layout.public).list_objects())
    assert_closed(store, tmp_path)
    assert verify_dir(replica, fqrn, key_file(s0)).revision == revision_of(replica)
    assert served_roots(replica) == [s0.manifest().root_catalog]
    # And the next pull after a collection fetches only what is new.
    publish(s0, cid_entries("d", 4), "/sw/g/d")
    snap()
    assert "2 catalogs already held" in capsys.readouterr().out
    assert verify_dir(replica, fqrn, key_file(s0)).revision == s0.manifest().revision


def test_gc_deletes_garbage_catalogs_parents_first(
    served: tuple[Stratum0, RepositoryServer], tmp_path: Path
) -> None:
    """The order that keeps "a stored catalog has its whole subtree" true while gc runs."""
    from rcds.replica.gc import _parents_first

    s0, server = served
    root = tmp_path / "s1"
    entry = add_replica(root, s0.name, server.url_for(s0.name), key_file(s0))
    Replicator(workers=2).pull(entry.spec())
    old_root = s0.manifest().root_catalog.object_name(ObjectKind.CATALOG)
    store = LocalStore(entry.dir)
    old_catalogs = {n for n in store.list_objects() if n.endswith("C")}
    s0.remove("/sw/g/a")
    Replicator(workers=2).pull(entry.spec())
    garbage = old_catalogs - {s0.manifest().root_catalog.object_name(ObjectKind.CATALOG)}
    assert len(garbage) >= 2  # the old root and the catalog of /sw/g/a
    order = _parents_first(store, tmp_path, garbage)
    assert sorted(order) == sorted(garbage)
    assert order[0] == old_root
