"""Building blocks for test tarballs: members, raw headers, compression and listings.

Everything here is deterministic (fixed mtimes, owners and seeds), so a test corpus built
twice is the same bytes. A *listing* maps a member path (no trailing slash, no ``./``) to
an :class:`Expected` entry describing what an unpacker must produce for it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import zstandard

Compression = Literal["none", "gzip", "bzip2", "xz", "zstd"]
"""The container formats an upload may use."""
EntryType = Literal["file", "dir", "symlink", "hardlink"]
"""What a listing entry is."""
Policy = Literal["reject", "sanitize"]
"""What the ingest engine must do with a hostile case (see :mod:`rcds.testing.hostile_tars`)."""

COMPRESSIONS: Final[tuple[Compression, ...]] = ("none", "gzip", "bzip2", "xz", "zstd")
MTIME: Final = 1_600_000_000
"""Default member mtime (2020-09-13T12:26:40Z)."""
BLOCK: Final = 512


@dataclass(frozen=True, slots=True)
class Expected:
    """One entry of a listing.

    ``mode`` is the permission bits (``0o7777`` part) as stored in the archive. ``size`` and
    ``sha1`` (hex of the content) describe the content of files and hard links (a hard
    link's content is its target's). ``target`` is a symlink's target or a hard link's
    target path. ``mtime`` is the stored modification time.
    """

    type: EntryType
    mode: int
    size: int = 0
    sha1: str | None = None
    target: str | None = None
    mtime: int = MTIME


@dataclass(frozen=True, slots=True)
class HostileCase:
    """One hostile tarball: how to ``build`` it and what the engine must do with it.

    ``member`` is the name (or a prefix of a long name) a rejection message must contain,
    or None; ``sanitized`` is the listing a ``sanitize`` case must produce; ``max_bytes``
    is the decompressed-size limit to configure for the case, when it needs one.
    """

    name: str
    member: str | None
    policy: Policy
    reason: str
    build: Callable[[], bytes]
    compression: Compression = "none"
    max_bytes: int | None = None
    sanitized: Mapping[str, Expected] | None = None


def sha1(data: bytes) -> str:
    """Hex SHA-1 of ``data``."""
    return hashlib.sha1(data).hexdigest()


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    linkname: str = "",
    mtime: int = MTIME,
    devmajor: int = 0,
    devminor: int = 0,
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    """A member for :func:`tar`: a TarInfo of type ``kind`` with fixed owner fields, and its data."""
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.linkname = linkname
    ti.mtime = mtime
    ti.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.devmajor, ti.devminor = devmajor, devminor
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar holding ``members`` in order (tarfile checks nothing on write)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return out.getvalue()


def raw_header(
    name: bytes,
    *,
    size: int = 0,
    typeflag: bytes = b"0",
    mode: int = 0o644,
    linkname: bytes = b"",
    mtime: int = MTIME,
    checksum: int | None = None,
) -> bytes:
    """A ustar header built byte by byte, for what tarfile refuses or rewrites.

    ``name`` may hold any bytes (NUL, invalid UTF-8) up to 100; ``checksum`` overrides the
    computed header checksum.
    """
    h = bytearray(BLOCK)
    h[0 : len(name)] = name[:100]
    h[100:108] = b"%07o\0" % mode
    h[108:124] = b"0000000\x000000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % mtime
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157 : 157 + len(linkname)] = linkname[:100]
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % (sum(h) if checksum is None else checksum)
    return bytes(h)


def raw_file(name: bytes, data: bytes) -> bytes:
    """A regular-file member from :func:`raw_header` with its padded data."""
    return raw_header(name, size=len(data)) + pad(data)


def header_only(name: str, size: int) -> bytes:
    """The header(s) of a regular file claiming ``size`` bytes (pax if needed), without data."""
    ti = member(name)[0]
    ti.size = size
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pad(data: bytes) -> bytes:
    """``data`` followed by zeros up to a multiple of 512 bytes."""
    return data + bytes(-len(data) % BLOCK)


def end_of_archive() -> bytes:
    """The two zero blocks that end a tar archive."""
    return bytes(2 * BLOCK)


def compress(data: bytes, fmt: Compression) -> bytes:
    """Compress deterministically (gzip with mtime 0, xz with CRC-64, zstd with checksum)."""
    if fmt == "none":
        return data
    if fmt == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if fmt == "bzip2":
        return bz2.compress(data, 9)
    if fmt == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    return bytes(cctx.compress(data))


def detect(data: bytes) -> Compression | None:
    """The compression of ``data`` from its magic bytes (``none`` for a ustar magic)."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:3] == b"BZh":
        return "bzip2"
    if data[:6] == b"\xfd7zXZ\0":
        return "xz"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if data[257:262] == b"ustar":
        return "none"
    return None


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _reader(data: bytes, fmt: Compression) -> _Reader:
    src = io.BytesIO(data)
    if fmt == "gzip":
        return gzip.GzipFile(fileobj=src)
    if fmt == "bzip2":
        return bz2.BZ2File(src)
    if fmt == "xz":
        return lzma.LZMAFile(src)
    if fmt == "zstd":
        reader: _Reader = zstandard.ZstdDecompressor().stream_reader(src)
        return reader
    return src


def decompress(data: bytes, fmt: Compression, limit: int | None = None) -> bytes:
    """Decompress a whole stream, raising on corruption; stop after ``limit`` bytes if given.

    Raises ``ValueError`` when more than ``limit`` bytes come out, and the codec's own
    error (``zlib.error``, ``EOFError``, ``OSError``, ``lzma.LZMAError``,
    ``zstandard.ZstdError``) when the stream is corrupt or truncated.
    """
    chunks: list[bytes] = []
    total = 0
    with contextlib.closing(_reader(data, fmt)) as stream:
        while limit is None or total <= limit:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if limit is not None and total > limit:
        raise ValueError(f"stream inflates beyond {limit} bytes")
    if fmt == "zstd" and zstandard.frame_content_size(data) not in (total, -1):
        raise EOFError("zstd frame ended early")
    return b"".join(chunks)


def corrupt(data: bytes, count: int = 16) -> bytes:
    """``data`` with ``count`` bytes in the middle inverted."""
    out = bytearray(data)
    mid = len(out) // 2
    out[mid : mid + count] = bytes(b ^ 0xFF for b in out[mid : mid + count])
    return bytes(out)


def gzip_raw(deflate: bytes, crc: int, size: int) -> bytes:
    """Wrap a raw deflate stream in a gzip member (no name, mtime 0) with its trailer."""
    trailer = (crc & 0xFFFFFFFF).to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\0\0\0\0\x02\xff" + deflate + trailer


def listing_of_tar(data: bytes) -> dict[str, Expected]:
    """Read an archive (any compression, including zstd) with tarfile and describe its members."""
    out: dict[str, Expected] = {}
    plain = decompress(data, detect(data) or "none")
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tf:
        for m in tf.getmembers():
            name = m.name.rstrip("/")
            mode = m.mode & 0o7777
            if m.isdir():
                out[name] = Expected("dir", mode, mtime=int(m.mtime))
            elif m.issym():
                out[name] = Expected("symlink", mode, target=m.linkname, mtime=int(m.mtime))
            elif m.islnk():
                t = out[m.linkname]
                out[name] = Expected("hardlink", mode, t.size, t.sha1, m.linkname, int(m.mtime))
            else:
                f = tf.extractfile(m)
                content = f.read() if f is not None else b""
                out[name] = Expected("file", mode, len(content), sha1(content), mtime=int(m.mtime))
    return out


def listing_of_dir(root: Path) -> dict[str, Expected]:
    """Describe an unpacked tree. The first path of a multiply linked inode (in sorted
    order) is a ``file``, later ones ``hardlink`` entries targeting it."""
    out: dict[str, Expected] = {}
    first: dict[tuple[int, int], str] = {}
    paths = sorted(
        (os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files),
        key=os.fsencode,
    )
    for rel in paths:
        p = root / rel
        st = p.lstat()
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = Expected("dir", mode, mtime=mtime)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = Expected("symlink", mode, target=os.readlink(p), mtime=mtime)
        else:
            content = p.read_bytes()
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first:
                out[rel] = Expected("hardlink", mode, len(content), sha1(content), first[key], mtime)
                continue
            first.setdefault(key, rel)
            out[rel] = Expected("file", mode, len(content), sha1(content), mtime=mtime)
    return out


def crc32_of_zeros(n: int, crc: int = 0) -> int:
    """CRC-32 continued over ``n`` zero bytes (in 1 MiB steps)."""
    block = bytes(1 << 20)
    while n:
        step = min(n, len(block))
        crc = zlib.crc32(block[:step] if step < len(block) else block, crc)
        n -= step
    return crc


def gzip_zero_bomb(parts: int, part_size: int, name: str = "zeros/part{:02d}.bin") -> bytes:
    """A valid gzip'd tar of ``parts`` files of ``part_size`` zero bytes (a multiple of 1 MiB),
    built in well under a second and ~1/1000 of the inflated size.

    After a full flush, deflate output depends only on the input that follows, so one
    compressed MiB of zeros is repeated instead of compressing every byte.
    """
    if part_size % (1 << 20):
        raise ValueError("part_size must be a multiple of 1 MiB")
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero_block = z.compress(bytes(1 << 20)) + z.flush(zlib.Z_FULL_FLUSH)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    out: list[bytes] = []
    crc = size = 0
    for i in range(parts):
        header = header_only(name.format(i), part_size)
        out.append(z.compress(header) + z.flush(zlib.Z_FULL_FLUSH))
        out.append(zero_block * (part_size >> 20))
        crc = crc32_of_zeros(part_size, zlib.crc32(header, crc))
        size += len(header) + part_size
    tail = bytes(2 * BLOCK + (-(size + 2 * BLOCK) % 10240))
    out.append(z.compress(tail) + z.flush(zlib.Z_FINISH))
    return gzip_raw(b"".join(out), zlib.crc32(tail, crc), size + len(tail))
