"""Directory listings kept by the mount (rcds.mount.directories) answer lookups too.

In-process, over the real test repository (served on loopback): the request handlers are
called with real request bodies, no kernel in between, so what the catalog was asked can be
seen (the repository's own ``node_if_local`` is wrapped to count its calls).
"""

from __future__ import annotations

import os
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

from mountkit import write_config
from testkit import NAME


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
