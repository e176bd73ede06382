"""Directory listings kept by the mount (rcds.mount.directories) answer lookups too, and are
made ahead of the requests of a tree being listed.

In-process, over the real test repository (served on loopback): the request handlers are
called with real request bodies, no kernel in between, so what the catalog was asked can be
seen (the repository's own ``node_if_local`` is wrapped to count its calls).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rcds.mount.fuse import protocol as p
from rcds.mount.fuse.protocol import Op
from rcds.mount.fuse.session import Later, Request
from rcds.mount.inodes import FUSE_ROOT
from rcds.mount.operations import RcdsOperations
from rcds.mount.options import MountOptions

from mountkit import wait_for, write_config
from testkit import NAME, Entry


@pytest.fixture
def ops(site: Any, tmp_path: Path) -> Iterator[RcdsOperations]:
    options = MountOptions(
        config_dir=write_config(tmp_path / "etc"),
        overrides={"CVMFS_SERVER_URL": ";".join(site.urls), "CVMFS_PUBLIC_KEY": str(site.key)},
        cache_dir=tmp_path / "cache",
    )
    ops = RcdsOperations([options.open(NAME)])
    yield ops
    ops.close()


def _answer(ops: RcdsOperations, opcode: Op, nodeid: int, body: bytes) -> Any:
    handler = ops.handlers()[opcode]
    answer = handler(Request(opcode, 1, nodeid, 0, 0, 0, memoryview(body)))
    return answer.fn(*answer.args) if isinstance(answer, Later) else answer


def _lookup(ops: RcdsOperations, parent: int, name: bytes) -> int:
    """The node id a LOOKUP answers (0: a cached "no such name")."""
    out = _answer(ops, Op.LOOKUP, parent, name + b"\0")
    return int(p.ENTRY_OUT_HEAD.unpack_from(out)[0])


def test_a_lookup_in_a_listed_directory_asks_no_catalog(ops: RcdsOperations) -> None:
    (mount,) = ops.mounts.values()
    # down to the first directory with several entries, looking each level up
    parent, path = FUSE_ROOT, ""
    while len(children := mount.listing(path)[0]) < 2:
        path = children[0].entry.path
        parent = _lookup(ops, parent, os.fsencode(path.rpartition("/")[2]))
    names = [os.fsencode(c.entry.name) for c in children]
    asked: list[str] = []
    real = mount.node_if_local

    def counted(path: str) -> Any:
        asked.append(path)
        return real(path)

    mount.node_if_local = counted  # type: ignore[method-assign]
    # before a listing: the catalog answers
    assert _lookup(ops, parent, names[0]) == mount.node(children[0].entry.path).ino
    assert asked == [children[0].entry.path]
    # list the directory (READDIRPLUS), then look every name up: all from the listing
    _answer(ops, Op.READDIRPLUS, parent, p.READ_IN.pack(0, 0, 1 << 16, 0, 0, 0, 0))
    for name, child in zip(names, children, strict=True):
        assert _lookup(ops, parent, name) == mount.node(child.entry.path).ino
    assert len(asked) == 1
    # a name the listing lacks still goes to the catalog (and is absent)
    assert _lookup(ops, parent, b"no-such-name") == 0
    assert asked[1:] == [f"{path}/no-such-name"]


@pytest.fixture
def tree_ops(site: Any, tmp_path: Path) -> Iterator[RcdsOperations]:
    """Operations over a tree of directories: sw/la/{a..f}/{x,y,z}/f.txt."""
    site.publish([Entry(f"{d}/{s}/f.txt", b"f\n") for d in "abcdef" for s in "xyz"], "sw/la")
    options = MountOptions(
        config_dir=write_config(tmp_path / "etc"),
        overrides={"CVMFS_SERVER_URL": ";".join(site.urls), "CVMFS_PUBLIC_KEY": str(site.key)},
        cache_dir=tmp_path / "cache",
    )
    ops = RcdsOperations([options.open(NAME)])
    yield ops
    ops.close()


def _plus(ops: RcdsOperations, nodeid: int) -> bytes:
    return bytes(_answer(ops, Op.READDIRPLUS, nodeid, p.READ_IN.pack(0, 0, 1 << 16, 0, 0, 0, 0)))


def test_subdirectories_are_listed_ahead_of_the_requests_at_most_ahead(tree_ops: RcdsOperations) -> None:
    ops = tree_ops
    (mount,) = ops.mounts.values()
    listings = ops.listings
    assert listings.ahead == 64  # the default
    listings.ahead = 3
    listed: list[str] = []
    real = mount.listing

    def counted(path: str) -> Any:
        listed.append(path)
        return real(path)

    mount.listing = counted  # type: ignore[method-assign]
    la = _lookup(ops, _lookup(ops, FUSE_ROOT, b"sw"), b"la")
    _plus(ops, la)  # a request lists sw/la: its subdirectories are listed ahead, in walk order
    assert wait_for(lambda: listings.listed_ahead == 3, timeout=30)
    time.sleep(0.2)
    assert listings.listed_ahead == 3  # no more than `ahead` before a request comes
    assert listed == ["/sw/la", "/sw/la/a", "/sw/la/a/x", "/sw/la/a/y"]
    # the request for sw/la/a finds it listed: no catalog query, the right entries
    a = _lookup(ops, la, b"a")
    assert a == mount.node("/sw/la/a").ino
    out = _plus(ops, a)
    assert all(name in out for name in (b"x", b"y", b"z"))
    assert listings.asked_ahead == 1
    assert wait_for(lambda: listings.listed_ahead == 4, timeout=30)  # caught up: one more ahead
    assert listed[4:] == ["/sw/la/a/z"]
    x = _lookup(ops, a, b"x")
    assert x == mount.node("/sw/la/a/x").ino and b"f.txt" in _plus(ops, x)
    assert len(listed) == 5 or listed[5:] == ["/sw/la/b"]  # asked: the next one ahead only
    listings.close()
    assert listings._thread is not None and not listings._thread.is_alive()


def test_nothing_is_listed_ahead_when_turned_off(tree_ops: RcdsOperations) -> None:
    ops = tree_ops
    ops.listings.ahead = 0
    la = _lookup(ops, _lookup(ops, FUSE_ROOT, b"sw"), b"la")
    _plus(ops, la)
    time.sleep(0.2)
    assert ops.listings.listed_ahead == 0 and ops.listings._thread is None
