"""The tree builder's catalog rows, checked column by column against the stock layout.

Regular files take a lean path (value lists built once, parent hash per directory, constants in
the statement) and the parent index is built after the rows: every column must still be what
the stock writer puts there, computed here independently of :mod:`rcds.format.pathhash`.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import stat
import struct
from pathlib import Path

import pytest

from rcds.errors import InputError
from rcds.format.catalog_schema import CREATE_STATEMENTS, Tally
from rcds.format.chunker import ChunkParams
from rcds.format.dirent import FLAG_DIR, FLAG_NESTED_ROOT, Dirent
from rcds.format.hashes import Algorithm
from rcds.publish.catalog_rw import WritableCatalog
from rcds.publish.objects import ContentWriter
from rcds.publish.tarsource import iter_tar
from rcds.publish.tree_builder import FLUSH_ROWS, TreeBuilder
from rcds.storage.local import LocalStore

from testkit import Entry, make_tar

MOUNT = "/sw/x"
NOW = 1_700_000_123
SHA1_FILE_FLAGS = 4  # FLAG_FILE, zlib, SHA-1 (algorithm value 0)
CHUNKED_FLAGS = 4 | 64


def _pair(path: str) -> tuple[int, int]:
    a, b = struct.unpack("<qq", hashlib.md5(path.encode()).digest())
    return a, b


def _build(tmp_path: Path, entries: list[Entry], chunking: ChunkParams | None = None) -> Path:
    """Ingest ``entries`` into a fresh nested catalog at MOUNT; return the finished catalog file."""
    db = tmp_path / "child.db"
    root = Dirent(MOUNT, "x", stat.S_IFDIR | 0o755, 4096, NOW, FLAG_DIR | FLAG_NESTED_ROOT)
    cat = WritableCatalog.create(db, root)
    writer = ContentWriter(LocalStore(tmp_path / "store", create=True), chunking=chunking, processes=False)
    try:
        builder = TreeBuilder(cat, writer, Algorithm.SHA1, NOW)
        for m in iter_tar(io.BytesIO(make_tar(entries, "none"))):
            builder.add(m)
        builder.finish()
    except BaseException:
        cat.abort()
        raise
    finally:
        writer.close(wait=False)
    cat.finalize(revision=1, previous=None, last_modified=NOW, subtree=Tally())
    return db


def _rows(db: Path) -> dict[tuple[int, int], tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, typeof(hash), size, mode, mtime, "
            "mtimens, flags, name, symlink, typeof(symlink), uid, gid, typeof(xattr) FROM catalog"
        ).fetchall()
    finally:
        con.close()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_every_row_has_the_stock_columns(tmp_path: Path) -> None:
    # more files than one insert batch, in several directories, with the other kinds in between
    entries = [Entry("pkg", kind="dir", mode=0o750, mtime=1_600_000_000)]
    files: dict[str, bytes] = {}
    for i in range(FLUSH_ROWS + 300):
        name = f"pkg/sub{i % 7}/mod_{i}.py"
        files[name] = f"print({i})\n".encode()
        entries.append(Entry(name, files[name], mode=0o755 if i % 5 == 0 else 0o644, mtime=1_600_000_000 + i))
    entries += [
        Entry("pkg/link", kind="symlink", target="sub0/mod_0.py"),
        Entry("pkg/sub0/hard", kind="hardlink", target="pkg/sub0/mod_0.py"),
        Entry("top.txt", b"top\n"),
        Entry("dönüş/ünï.txt", b"utf-8 names\n"),
    ]
    rows = _rows(_build(tmp_path, entries))

    for name, data in files.items():
        full = f"{MOUNT}/{name}"
        parent, _, base = full.rpartition("/")
        i = int(base[4:-3])
        (
            p1,
            p2,
            hardlinks,
            hash_type,
            size,
            mode,
            mtime,
            mtimens,
            flags,
            rname,
            symlink,
            symlink_type,
            uid,
            gid,
            xattr,
        ) = rows[_pair(full)]
        assert (p1, p2) == _pair(parent)
        assert rname == base and size == len(data) and mtime == 1_600_000_000 + i
        assert mode == stat.S_IFREG | (0o755 if i % 5 == 0 else 0o644)
        assert hash_type == "blob" and flags == SHA1_FILE_FLAGS and mtimens is None
        assert (symlink, symlink_type, xattr) == ("", "text", "null")  # as stock writes them
        assert (uid, gid) == (0, 0)
        assert hardlinks == (1 if i != 0 else (1 << 32) | 2)  # mod_0.py shares a group with "hard"
    for name in ("top.txt", "dönüş/ünï.txt", ".cvmfscatalog"):
        full = f"{MOUNT}/{name}"
        row = rows[_pair(full)]
        assert row[:2] == _pair(full.rpartition("/")[0]) and row[8] == SHA1_FILE_FLAGS and row[2] == 1
    # directories: their children's parent hash, link count 2 + subdirectories
    pkg = rows[_pair(f"{MOUNT}/pkg")]
    assert pkg[:2] == _pair(MOUNT) and pkg[2] == 2 + 7 and pkg[5] == stat.S_IFDIR | 0o750
    assert rows[_pair(f"{MOUNT}/pkg/sub3")][2] == 2
    assert rows[_pair(f"{MOUNT}/dönüş")][:2] == _pair(MOUNT)
    link = rows[_pair(f"{MOUNT}/pkg/link")]
    assert link[10:12] == ("sub0/mod_0.py", "text") and link[4] == len("sub0/mod_0.py")
    assert rows[_pair(f"{MOUNT}/pkg/sub0/hard")][2] == (1 << 32) | 2
    assert len(rows) == len(files) + 4 + 7 + 2 + 1 + 1  # files, others, sub*, pkg + dönüş, marker, root


def test_the_finished_catalog_has_every_schema_object(tmp_path: Path) -> None:
    db = _build(tmp_path, [Entry(f"d{i % 3}/f{i}", b"x" * i) for i in range(50)])
    con = sqlite3.connect(db)
    try:
        sql = sorted(s for (s,) in con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
        assert sql == sorted(s.rstrip(";") for s in CREATE_STATEMENTS)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        plan = " ".join(str(r) for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT name FROM catalog WHERE parent_1 = 1 AND parent_2 = 2"
        ))  # fmt: skip
        assert "idx_catalog_parent" in plan
        stats = dict(con.execute("SELECT counter, value FROM statistics"))
        assert (stats["self_regular"], stats["self_dir"]) == (51, 4)  # with the marker; the root
    finally:
        con.close()


def test_chunked_files_keep_their_chunk_rows(tmp_path: Path) -> None:
    params = ChunkParams(64 << 10, 128 << 10, 256 << 10)
    big = hashlib.shake_128(b"seed").digest(1 << 20)
    rows = _rows(_build(tmp_path, [Entry("a/small", b"s"), Entry("a/big", big)], chunking=params))
    row = rows[_pair(f"{MOUNT}/a/big")]
    assert row[8] == CHUNKED_FLAGS and row[3] == "null" and row[4] == len(big)
    con = sqlite3.connect(tmp_path / "child.db")
    try:
        chunks = con.execute(
            "SELECT offset, size FROM chunks WHERE md5path_1 = ? AND md5path_2 = ?", _pair(f"{MOUNT}/a/big")
        ).fetchall()
    finally:
        con.close()
    assert len(chunks) > 1 and sum(s for _, s in chunks) == len(big)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        # the same file again after more than one insert batch: caught by the primary key
        (
            [Entry(f"d/f{i}", b"1") for i in range(FLUSH_ROWS + 10)] + [Entry("d/f3", b"2")],
            "'d/f3' appears more than once",
        ),
        ([Entry("d/f", b"1"), Entry("d/f", b"2")], "'d/f' appears more than once"),
        ([Entry("d/f", b"1"), Entry("d/f/g", b"2")], "lies below 'd/f', which is a file"),
        ([Entry("d/f", b"1"), Entry("d", b"2")], "'d' is both a directory and a file"),
        ([Entry("d/l", kind="symlink", target="x"), Entry("d/l/g", b"2")], "which is a symlink"),
    ],
)
def test_conflicting_members_are_refused_by_name(tmp_path: Path, entries: list[Entry], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _build(tmp_path, entries)
