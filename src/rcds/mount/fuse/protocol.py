"""The FUSE kernel protocol (``linux/fuse.h``, ABI 7.x): opcodes, flags and the byte layouts of
the requests we read from ``/dev/fuse`` and of the replies we write back.

Written from the kernel's documented ABI (``include/uapi/linux/fuse.h``); every structure is
little/native endian and padded to 8 bytes. Only what a read-only file system needs is here.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from enum import IntEnum

KERNEL_MAJOR = 7
KERNEL_MINOR = 38
"""The protocol version we speak (the kernel adapts to the lower of its own and ours)."""
ROOT_ID = 1
"""Node id of the file system's root."""


class Op(IntEnum):
    """Request opcodes (``enum fuse_opcode``)."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


WRITE_OPS = frozenset(
    {
        Op.SETATTR,
        Op.SYMLINK,
        Op.MKNOD,
        Op.MKDIR,
        Op.UNLINK,
        Op.RMDIR,
        Op.RENAME,
        Op.RENAME2,
        Op.LINK,
        Op.WRITE,
        Op.SETXATTR,
        Op.REMOVEXATTR,
        Op.CREATE,
        Op.FALLOCATE,
        Op.COPY_FILE_RANGE,
        Op.TMPFILE,
    }
)
"""Requests that would change the file system (a read-only one answers ``EROFS``)."""
NO_REPLY_OPS = frozenset({Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT})
"""Requests the kernel expects no answer to."""


class InitFlag:
    """``FUSE_*`` capability bits of INIT (``flags``; bits 32 and up travel in ``flags2``)."""

    ASYNC_READ = 1 << 0
    BIG_WRITES = 1 << 5
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    INIT_EXT = 1 << 30
    PASSTHROUGH = 1 << 37
    """Reads (and mmap) of a file opened with :attr:`OpenFlag.PASSTHROUGH` go to a backing
    file registered with :data:`IOC_BACKING_OPEN` (kernel 6.9+, protocol 7.40)."""


class OpenFlag:
    """``FOPEN_*`` bits of an OPEN/OPENDIR reply."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    PASSTHROUGH = 1 << 7


class Notify(IntEnum):
    """Notification codes (written unsolicited, ``unique`` 0, code in the ``error`` field)."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3


IN_HEADER = struct.Struct("<IIQQIIIHH")
"""``fuse_in_header``: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding."""
OUT_HEADER = struct.Struct("<IiQ")
"""``fuse_out_header``: len, error (negative errno or 0; a notify code), unique."""
INIT_IN = struct.Struct("<IIII")
"""The start of ``fuse_init_in``: major, minor, max_readahead, flags (flags2 follows from 7.36)."""
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
"""``fuse_init_out``: major, minor, max_readahead, flags, max_background, congestion_threshold,
max_write, time_gran, max_pages, map_alignment, flags2, max_stack_depth (7.40), unused."""
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
"""``fuse_attr``: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
mode, nlink, uid, gid, rdev, blksize, flags."""
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
"""``fuse_entry_out`` before its ``fuse_attr``: nodeid, generation, entry_valid, attr_valid,
entry_valid_nsec, attr_valid_nsec."""
ATTR_OUT_HEAD = struct.Struct("<QII")
"""``fuse_attr_out`` before its ``fuse_attr``: attr_valid, attr_valid_nsec, dummy."""
OPEN_OUT = struct.Struct("<QIi")
"""``fuse_open_out``: fh, open_flags, backing_id (7.40; padding before)."""
BACKING_MAP = struct.Struct("<iIQ")
"""``fuse_backing_map``: fd, flags, padding (the argument of :data:`IOC_BACKING_OPEN`)."""
IOC_BACKING_OPEN = (1 << 30) | (BACKING_MAP.size << 16) | (229 << 8) | 1
"""``FUSE_DEV_IOC_BACKING_OPEN`` (``_IOW(229, 1, struct fuse_backing_map)``): registers an open
file as a backing file, answers its id (needs ``CAP_SYS_ADMIN`` in the initial namespace)."""
IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2
"""``FUSE_DEV_IOC_BACKING_CLOSE`` (``_IOW(229, 2, uint32_t)``): drops a backing id."""
READ_IN = struct.Struct("<QQIIQII")
"""``fuse_read_in``: fh, offset, size, read_flags, lock_owner, flags, padding."""
FORGET_IN = struct.Struct("<Q")
"""``fuse_forget_in``: nlookup."""
BATCH_FORGET_IN = struct.Struct("<II")
"""``fuse_batch_forget_in``: count, dummy; then ``count`` of :data:`FORGET_ONE`."""
FORGET_ONE = struct.Struct("<QQ")
"""``fuse_forget_one``: nodeid, nlookup."""
GETXATTR_IN = struct.Struct("<II")
"""``fuse_getxattr_in``: size, padding (then the name, NUL-terminated)."""
GETXATTR_OUT = struct.Struct("<II")
"""``fuse_getxattr_out``: size, padding."""
ACCESS_IN = struct.Struct("<II")
"""``fuse_access_in``: mask, padding."""
OPEN_IN = struct.Struct("<II")
"""``fuse_open_in``: flags, open_flags."""
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
"""``fuse_kstatfs``: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare."""
DIRENT_HEAD = struct.Struct("<QQII")
"""``fuse_dirent`` before its name: ino, off, namelen, type."""
INVAL_INODE_OUT = struct.Struct("<Qqq")
"""``fuse_notify_inval_inode_out``: ino, off, len."""
INVAL_ENTRY_OUT = struct.Struct("<QII")
"""``fuse_notify_inval_entry_out``: parent, namelen, flags (then the name, NUL-terminated)."""

MIN_READ_BUFFER = 8192
"""The kernel refuses reads of ``/dev/fuse`` into smaller buffers."""


def split_seconds(seconds: float) -> tuple[int, int]:
    """A non-negative timeout as (seconds, nanoseconds)."""
    whole = int(max(0.0, seconds))
    return whole, int((max(0.0, seconds) - whole) * 1e9)


def pack_attr(st: os.stat_result) -> bytes:
    """``fuse_attr`` of a stat result."""
    return ATTR.pack(
        st.st_ino,
        st.st_size,
        st.st_blocks,
        st.st_atime_ns // 10**9,
        st.st_mtime_ns // 10**9,
        st.st_ctime_ns // 10**9,
        st.st_atime_ns % 10**9,
        st.st_mtime_ns % 10**9,
        st.st_ctime_ns % 10**9,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        0,
        st.st_blksize,
        0,
    )


def entry_out(st: os.stat_result, timeout: float) -> bytes:
    """``fuse_entry_out`` naming inode ``st.st_ino``, cached (name and attributes) for ``timeout`` s."""
    sec, nsec = split_seconds(timeout)
    return ENTRY_OUT_HEAD.pack(st.st_ino, 0, sec, sec, nsec, nsec) + pack_attr(st)


def negative_entry(timeout: float) -> bytes:
    """A ``fuse_entry_out`` saying "no such name", which the kernel caches for ``timeout`` s."""
    sec, nsec = split_seconds(timeout)
    return ENTRY_OUT_HEAD.pack(0, 0, sec, 0, nsec, 0) + bytes(ATTR.size)


def attr_out(st: os.stat_result, timeout: float) -> bytes:
    """``fuse_attr_out`` cached for ``timeout`` seconds."""
    sec, nsec = split_seconds(timeout)
    return ATTR_OUT_HEAD.pack(sec, nsec, 0) + pack_attr(st)


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def dirent(ino: int, offset: int, name: bytes, mode: int) -> bytes:
    """One ``fuse_dirent`` record (padded); ``offset`` is where the next READDIR resumes."""
    head = DIRENT_HEAD.pack(ino, offset, len(name), stat_mod.S_IFMT(mode) >> 12)
    size = DIRENT_HEAD.size + len(name)
    return head + name + bytes(_pad8(size) - size)


def direntplus(entry: bytes, ino: int, offset: int, name: bytes, mode: int) -> bytes:
    """One ``fuse_direntplus`` record: ``entry`` (a :func:`entry_out`) then the dirent."""
    return entry + dirent(ino, offset, name, mode)


def statfs_out(
    blocks: int, bfree: int, bavail: int, files: int, ffree: int, bsize: int, namelen: int
) -> bytes:
    """``fuse_statfs_out`` (block counts in units of ``bsize``)."""
    return STATFS_OUT.pack(blocks, bfree, bavail, files, ffree, bsize, namelen, bsize, 0)


def out_header(length: int, error: int, unique: int) -> bytes:
    """``fuse_out_header`` of a reply of ``length`` bytes in all."""
    return OUT_HEADER.pack(length, error, unique)


def cstring(body: memoryview | bytes, start: int = 0) -> bytes:
    """The NUL-terminated string at ``start`` of a request body."""
    raw = bytes(body[start:])
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]
