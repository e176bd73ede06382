"""Where ``rcds get`` keeps its resume state: in the cache directory, never in the copied tree.

Real engine servers on loopback; the many-small-files tree of ``getkit`` (worker processes and
the in-process path), a repository that holds a file named like the old state file, a
destination whose parent must not be written, and a state file left by an older version.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.get import materialize as mat
from rcds.client.get import state as getstate
from rcds.client.get.materialize import materialize
from rcds.client.get.state import LEGACY_STATE_FILE, STATE_DIR, GetState, state_path

from getkit import MANY, recorded, regular_files
from testkit import NAME, Entry

if TYPE_CHECKING:
    from conftest import Site


def every_name(dest: Path) -> set[str]:
    return {str(p.relative_to(dest)) for p in dest.rglob("*")}


@pytest.mark.parametrize("processes", [0, 2])
def test_a_complete_copy_leaves_no_state_in_the_tree(
    site: Site, many: dict[str, bytes], tmp_path: Path, processes: int
) -> None:
    dest = tmp_path / "out"
    materialize(site.open(), MANY, dest, processes=processes)
    assert regular_files(dest) == many
    names = every_name(dest)
    assert LEGACY_STATE_FILE not in names
    assert not [n for n in names if n.endswith(".tmp") or n.endswith(".json")]
    # the state is in the cache directory, under the destination's real path, and names it
    head = json.loads(state_path(site.cache_dir, dest).read_text().splitlines()[0])
    assert head["target"] == os.path.realpath(dest) and head["fqrn"] == NAME
    assert set(many) <= set(recorded(site.cache_dir, dest))
    # a second copy into the same destination finds everything current and downloads nothing
    before = site.fetched("data/")
    report = materialize(site.open(), MANY, dest, processes=processes)
    assert report.skipped == len(many) + 1  # with .cvmfscatalog
    assert site.fetched("data/") == before
    assert every_name(dest) == names


def test_the_same_destination_through_another_path_has_the_same_state(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert state_path(site.cache_dir, tmp_path / "alias" / "out") == state_path(
        site.cache_dir, tmp_path / "real" / "out"
    )
    assert state_path(site.cache_dir, tmp_path / "a") != state_path(site.cache_dir, tmp_path / "b")


def test_a_repository_file_named_like_the_old_state_file_is_copied_and_kept(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mat, "SAVE_EVERY", 0.0)
    path = "/sw/g/named"
    data = {LEGACY_STATE_FILE: b'{"version": 1, "not": "ours"}\n', "x/a.txt": b"a\n", "x/b.txt": b"b\n"}
    site.publish([Entry(rel, body) for rel, body in data.items()], path)
    dest = tmp_path / "out"
    stop = {"after": 1}

    def interrupt(p: mat.Progress) -> None:
        if p.files_done >= stop["after"]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(site.open(), path, dest, processes=0, progress=interrupt)
    stop["after"] = 10**9
    report = materialize(site.open(), path, dest, processes=0, progress=interrupt)
    assert regular_files(dest) == data  # the repository's file, with its content, stays
    assert report.files == 4 and report.skipped >= 1
    report = materialize(site.open(), path, dest, processes=0)
    assert regular_files(dest) == data and report.skipped == 4


def test_nothing_is_written_beside_the_destination(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    parent = tmp_path / "area"
    parent.mkdir()
    (parent / "out").mkdir()
    parent.chmod(0o555)  # read-only for an ordinary user (root writes anyway: the names are checked)
    try:
        materialize(site.open(cache_dir=tmp_path / "cache"), MANY, parent / "out", processes=2)
        assert sorted(p.name for p in parent.iterdir()) == ["out"]
        assert regular_files(parent / "out") == many
    finally:
        parent.chmod(0o755)


def test_a_state_file_of_an_older_version_is_used_and_removed(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest)
    # what an older version left: the records in the destination itself, nothing in the cache
    old = {"version": 1, "fqrn": NAME, "revision": 1, "files": recorded(tmp_path / "c1", dest)}
    (dest / LEGACY_STATE_FILE).write_text(json.dumps(old))
    (dest / "d0/f000.txt").unlink()
    report = materialize(site.open(cache_dir=tmp_path / "c2"), MANY, dest)
    assert report.skipped == len(many)  # all but the removed file (with .cvmfscatalog)
    assert regular_files(dest) == many
    assert not (dest / LEGACY_STATE_FILE).exists()
    assert set(many) <= set(recorded(tmp_path / "c2", dest))


def test_the_state_is_a_log_appended_to_and_compacted(tmp_path: Path) -> None:
    target = tmp_path / "out"
    path = state_path(tmp_path / "cache", target)
    s = GetState(path, NAME, target)
    s.record("a", "k1")
    s.save(3)
    s.record("b\nc", "k2")  # any name, one line each
    s.record("a", "k3")
    s.save(3)
    assert len(path.read_text().splitlines()) == 3  # header, [a], [b, a again]: appended
    assert GetState(path, NAME, target).done == {"a": "k3", "b\nc": "k2"}
    with open(path, "a") as f:
        f.write('[["d", "k')  # a line cut short by a crash
    again = GetState(path, NAME, target)
    assert again.done == {"a": "k3", "b\nc": "k2"}
    again.save(4)  # the first save of a copy writes it whole
    assert len(path.read_text().splitlines()) == 2


def test_a_state_of_another_repository_or_destination_is_ignored(tmp_path: Path) -> None:
    target = tmp_path / "out"
    path = state_path(tmp_path / "cache", target)
    s = GetState(path, NAME, target)
    s.record("a", "k1")
    s.save(3)
    assert GetState(path, NAME, target).done == {"a": "k1"}
    assert GetState(path, "other.example.org", target).done == {}
    head, rest = path.read_text().split("\n", 1)
    data = json.loads(head)
    data["target"] = str(tmp_path / "elsewhere")
    path.write_text(json.dumps(data) + "\n" + rest)
    assert GetState(path, NAME, target).done == {}
    path.write_text("{not json")
    assert GetState(path, NAME, target).done == {}


def test_old_states_are_pruned_when_a_new_one_is_written(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / STATE_DIR).mkdir(parents=True)
    stale, recent = cache / STATE_DIR / "stale.json", cache / STATE_DIR / "recent.json"
    for p in (stale, recent):
        p.write_text("{}")
    old = time.time() - getstate.STATE_MAX_AGE - 60
    os.utime(stale, (old, old))
    s = GetState(state_path(cache, tmp_path / "out"), NAME, tmp_path / "out")
    s.record("a", "k")
    s.save(1)
    assert not stale.exists() and recent.exists()
    assert state_path(cache, tmp_path / "out").is_file()
