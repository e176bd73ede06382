"""Inode numbers of the mount and the node table (no FUSE needed)."""

from __future__ import annotations

import os

from rcds.client.tree.stat import inode_of, make_stat
from rcds.format.dirent import Dirent, link_count_field
from rcds.format.hashes import ContentHash
from rcds.mount.inodes import FUSE_ROOT, InodeSpace, Node, NodeTable, entry_stat
from rcds.mount.repomount import restamp
from rcds.mount.xattrs import catalog_xattrs


def _entry(path: str, mode: int, data: bytes | None = None, hardlinks: int = 1) -> Dirent:
    return Dirent(
        path=path,
        name=path.rpartition("/")[2],
        mode=mode,
        size=len(data or b""),
        mtime=1,
        flags=4 if data is not None else 1,
        hardlinks=hardlinks,
        hash=ContentHash.of(data) if data else None,
        symlink="",
        uid=0,
        gid=0,
        mtimens=None,
        xattr=None,
    )


def test_inode_numbers() -> None:
    one = InodeSpace("a.example.org", shared=False)
    root = _entry("", 0o40755)
    d = _entry("/d", 0o40755)
    f1 = _entry("/d/f", 0o100644, b"one")
    f2 = _entry("/d/f", 0o100644, b"two")
    assert one.of(root, "") == FUSE_ROOT
    assert one.of(d, "") == inode_of(d, "")  # directories keep the client's number
    assert one.of(f1, "") == one.of(_entry("/d/f", 0o100644, b"one"), "")  # stable
    assert one.of(f1, "") != one.of(f2, "")  # new content, new inode
    group = link_count_field(2, 7)
    h1, h2 = _entry("/d/h1", 0o100644, b"x", group), _entry("/d/h2", 0o100644, b"x", group)
    assert one.of(h1, "") == one.of(h2, "")  # a hard-link group shares its inode
    shared_a = InodeSpace("a.example.org", shared=True)
    shared_b = InodeSpace("b.example.org", shared=True)
    assert shared_a.root != shared_b.root and FUSE_ROOT not in (shared_a.root, shared_b.root)
    assert shared_a.of(d, "") != shared_b.of(d, "")  # two repositories under one root
    assert all(x > 1 for x in (shared_a.of(d, ""), shared_a.of(f1, ""), one.of(f1, "")))


def test_node_table_counts_lookups_and_negatives() -> None:
    t = NodeTable()
    st = os.stat_result((0o100644, 5000, 0, 1, 0, 0, 3, 1, 1, 1))
    n = Node(5000, "a.example.org", "/d/f", None, st, 1)
    t.add_negative(1, b"f")
    t.looked_up(n, 1, b"f")
    assert (1, b"f") not in t.negative  # found now
    t.looked_up(Node(5000, "a.example.org", "/d/f", None, st, 2), 2, b"g")
    got = t.get(5000)
    assert got is not None and got.lookups == 2 and got.revision == 2
    assert got.links == {(1, b"f"), (2, b"g")}
    t.forget(5000, 1)
    assert t.get(5000) is not None
    t.forget(5000, 1)
    assert t.get(5000) is None
    t.negative_limit = 2
    for i in range(5):
        t.add_negative(1, b"n%d" % i)
    assert list(t.negative) == [(1, b"n3"), (1, b"n4")]


def test_catalog_xattrs_blob() -> None:
    blob = bytes([1, 2, 3, 2]) + b"abc" + b"v1" + bytes([1, 0]) + b"z"
    assert catalog_xattrs(blob) == {"abc": b"v1", "z": b""}
    assert catalog_xattrs(None) == {}
    assert catalog_xattrs(bytes([2, 1])) == {}  # unknown version
    assert catalog_xattrs(bytes([1, 1, 5, 5]) + b"ab") == {}  # truncated


def test_entry_stat_equals_the_client_stat_restamped() -> None:
    # the listing's one-step attributes must be exactly what make_stat + restamp gave (the
    # revision keeper compares them to decide what changed)
    fields = (
        "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
        "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks",
    )  # fmt: skip
    cases = 0
    for mode in (0o100644, 0o40755, 0o120777, 0o644):  # the last: no type bit (shown as a file)
        for mtimens in (None, 0, 123456789):
            for owner in (None, (5, 6)):
                for hardlinks in (1, 3):
                    e = Dirent(
                        "a/b",
                        "b",
                        mode,
                        12345,
                        1700000000,
                        0,
                        hardlinks=hardlinks,
                        uid=7,
                        gid=8,
                        mtimens=mtimens,
                    )
                    want = restamp(make_stat(e, "", 0), 999, owner)
                    got = entry_stat(e, 999, owner)
                    assert got == want
                    assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
                    cases += 1
    assert cases == 48
