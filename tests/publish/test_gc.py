"""Garbage collection: only unreachable objects go, readers of kept revisions keep reading."""

from __future__ import annotations

import os

import pytest

from rcds.errors import ConfigError
from rcds.format.hashes import ContentHash, ObjectKind

from testkit import Entry, publish, verify


def _objects(repo) -> set[str]:
    return set(repo.store.list_objects())


def test_gc_keeps_the_newest_revisions_and_frees_the_rest(repo, view_factory):
    publish(repo, [Entry("v.txt", b"version one\n" * 100)], "/sw/grp/cid")
    old_view = view_factory(repo)  # a reader of revision 1
    publish(repo, [Entry("v.txt", b"version two\n" * 100)], "/sw/grp/cid", replace=True)
    publish(repo, [Entry("w.txt", b"other\n")], "/sw/grp/other")
    before = _objects(repo)

    everything = repo.gc(keep_revisions=4)  # revisions 3, 2, 1 and the empty revision 0
    assert everything.revisions_kept == 4 and everything.deleted == 0
    assert old_view.read("/sw/grp/cid/v.txt") == b"version one\n" * 100

    result = repo.gc(keep_revisions=2)  # revisions 3 and 2: version one's content is garbage now
    assert result.deleted > 0 and result.bytes_freed > 0
    after = _objects(repo)
    assert after < before
    one = ContentHash.of(repo.compress(b"version one\n" * 100)).object_name(ObjectKind.FILE)
    assert one in before and one not in after
    verify(repo)
    v = view_factory(repo)
    assert v.read("/sw/grp/cid/v.txt") == b"version two\n" * 100


def test_gc_never_deletes_reachable_objects_and_removes_strays(repo):
    for i in range(3):
        publish(repo, [Entry(f"f{i}", os.urandom(300_000))], f"/sw/grp/c{i}")  # chunked files too
    stray = repo.store.root / "data" / "ab" / ("cd" * 19)
    stray.write_bytes(b"left by a crashed writer")
    result = repo.gc(keep_revisions=1)
    assert not stray.exists()
    assert result.deleted == 1 + 3  # the stray and the root catalogs of revisions 0, 1 and 2
    verify(repo)
    assert repo.gc(keep_revisions=1).deleted == 0


def test_gc_argument_is_checked(repo):
    with pytest.raises(ConfigError, match="at least 1"):
        repo.gc(keep_revisions=0)
