"""The FUSE ABI codec: sizes and field order of the kernel's structures, record padding."""

from __future__ import annotations

import os
import stat

import pytest

from rcds.mount.fuse import protocol as p


def _stat(ino: int = 77, mode: int = stat.S_IFREG | 0o644, size: int = 1234) -> os.stat_result:
    return os.stat_result(
        (mode, ino, 0, 3, 1000, 1001, size, 1, 2, 3),
        {
            "st_atime_ns": 1_700_000_000_123_456_789,
            "st_mtime_ns": 1_700_000_001_000_000_001,
            "st_ctime_ns": 1_700_000_002_999_999_999,
            "st_blksize": 4096,
            "st_blocks": 8,
        },
    )


def test_structure_sizes_match_the_kernel_abi() -> None:
    # sizes from include/uapi/linux/fuse.h (every structure padded to 8 bytes)
    assert p.IN_HEADER.size == 40
    assert p.OUT_HEADER.size == 16
    assert p.ATTR.size == 88
    assert p.ENTRY_OUT_HEAD.size + p.ATTR.size == 128
    assert p.ATTR_OUT_HEAD.size + p.ATTR.size == 104
    assert p.INIT_OUT.size == 64
    assert p.READ_IN.size == 40
    assert p.OPEN_OUT.size == 16
    assert p.STATFS_OUT.size == 80
    assert p.DIRENT_HEAD.size == 24
    assert p.INVAL_INODE_OUT.size == 24
    assert p.INVAL_ENTRY_OUT.size == 16
    assert p.FORGET_ONE.size == 16


def test_attributes_split_times_into_seconds_and_nanoseconds() -> None:
    fields = p.ATTR.unpack(p.pack_attr(_stat()))
    ino, size, blocks, atime, mtime, ctime, ans, mns, cns = fields[:9]
    mode, nlink, uid, gid, rdev, blksize, flags = fields[9:]
    assert (ino, size, blocks) == (77, 1234, 8)
    assert (atime, ans) == (1_700_000_000, 123_456_789)
    assert (mtime, mns) == (1_700_000_001, 1)
    assert (ctime, cns) == (1_700_000_002, 999_999_999)
    assert (mode, nlink, uid, gid, rdev, blksize, flags) == (stat.S_IFREG | 0o644, 3, 1000, 1001, 0, 4096, 0)


def test_entry_and_negative_entry_carry_the_timeouts() -> None:
    out = p.entry_out(_stat(ino=99), 60.25)
    nodeid, gen, entry_valid, attr_valid, entry_nsec, attr_nsec = p.ENTRY_OUT_HEAD.unpack_from(out)
    assert (nodeid, gen, entry_valid, attr_valid) == (99, 0, 60, 60)
    assert entry_nsec == attr_nsec == 250_000_000
    assert p.ATTR.unpack_from(out, p.ENTRY_OUT_HEAD.size)[0] == 99
    neg = p.negative_entry(5)
    assert len(neg) == 128
    assert p.ENTRY_OUT_HEAD.unpack_from(neg)[:3] == (0, 0, 5)  # nodeid 0: "no such name", cached 5 s


def test_dirent_records_are_padded_to_eight_bytes() -> None:
    for name in (b"a", b"seven77", b"eight888", b"n\xc3\xa4me-nine"):
        rec = p.dirent(5, 3, name, stat.S_IFDIR | 0o755)
        assert len(rec) % 8 == 0
        ino, off, namelen, kind = p.DIRENT_HEAD.unpack_from(rec)
        assert (ino, off, namelen, kind) == (5, 3, len(name), stat.S_IFDIR >> 12)
        assert rec[24 : 24 + namelen] == name
        assert rec[24 + namelen :] == bytes(len(rec) - 24 - namelen)
    plus = p.direntplus(p.entry_out(_stat(ino=5), 1), 5, 3, b"x", stat.S_IFLNK | 0o777)
    assert len(plus) == 128 + 32
    assert p.DIRENT_HEAD.unpack_from(plus, 128)[3] == stat.S_IFLNK >> 12


def test_headers_round_trip() -> None:
    raw = p.IN_HEADER.pack(40 + 6, p.Op.LOOKUP, 12345, 1, 1000, 1000, 4242, 0, 0) + b"name\0\0"
    length, opcode, unique, nodeid, uid, gid, pid, _, _ = p.IN_HEADER.unpack_from(raw)
    assert (length, opcode, unique, nodeid, uid, gid, pid) == (46, p.Op.LOOKUP, 12345, 1, 1000, 1000, 4242)
    assert p.cstring(memoryview(raw)[40:]) == b"name"
    assert p.OUT_HEADER.unpack(p.out_header(16, -2, 12345)) == (16, -2, 12345)


def test_flags_and_opcodes_have_the_kernel_values() -> None:
    assert (p.Op.OPEN, p.Op.READ, p.Op.INIT, p.Op.READDIRPLUS, p.Op.BATCH_FORGET) == (14, 15, 26, 44, 42)
    assert p.InitFlag.NO_OPEN_SUPPORT == 1 << 17 and p.InitFlag.NO_OPENDIR_SUPPORT == 1 << 24
    assert p.InitFlag.CACHE_SYMLINKS == 1 << 23 and p.InitFlag.MAX_PAGES == 1 << 22
    assert p.OpenFlag.KEEP_CACHE == 2 and p.OpenFlag.CACHE_DIR == 8
    assert p.WRITE_OPS.isdisjoint({p.Op.READ, p.Op.LOOKUP, p.Op.GETATTR})


@pytest.mark.parametrize(("seconds", "expected"), [(0, (0, 0)), (1.5, (1, 500_000_000)), (-3, (0, 0))])
def test_timeouts_split(seconds: float, expected: tuple[int, int]) -> None:
    assert p.split_seconds(seconds) == expected


def test_statfs_reply_layout() -> None:
    out = p.statfs_out(100, 40, 40, 7, 0, 4096, 255)
    assert p.STATFS_OUT.unpack(out) == (100, 40, 40, 7, 0, 4096, 255, 4096, 0)
