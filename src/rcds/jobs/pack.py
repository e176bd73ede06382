"""Reproducible tarballs of a directory, so the same code always gets the same CID.

The archive profile ("rcds pack v1") is fixed byte for byte, independent of the Python
version, the filesystem, the umask, the owner and the timestamps of the files:

* **Tar format**: POSIX pax. Every member has a ustar header (magic ``ustar\\0``, version
  ``00``). A pax extended header (type ``x``, name ``././@PaxHeader``, mode and mtime 0)
  precedes a member only when needed, with records in this order: ``path`` and
  ``linkpath`` (UTF-8) for a name or link target longer than 100 bytes or not pure ASCII,
  ``size`` for 8 GiB or more. The ustar fields then hold the name and target with non-ASCII
  characters replaced by ``?``, cut to 100 bytes, and a size in pax as 0. The ustar prefix field is
  never used. The archive ends with two zero blocks and is padded with zeros to a multiple
  of 10240 bytes. These bytes are exactly what :mod:`tarfile` writes in ``PAX_FORMAT`` for
  the same member fields, so the profile can be reproduced independently.
* **Members**: every directory (name with a trailing ``/``), regular file and symbolic
  link below the root, not the root itself, sorted by the byte order of the UTF-8 path.
  Names are relative, without a leading ``./``.
* **Metadata**: mtime :data:`FIXED_MTIME` (2000-01-01T00:00:00Z: after 1980, so the files
  can be zipped again, and not 0, which some tools read as "unset"); uid and gid 0;
  uname, gname, devmajor and devminor empty (all NUL). Modes: ``0755`` for directories and for
  files with any execute bit, ``0644`` for other files (so ``0600`` becomes ``0644``;
  published code is world-readable anyway), ``0777`` for symbolic links. setuid, setgid
  and sticky bits are dropped.
* **Symbolic links** are kept as links with their target unchanged. A *relative* target
  that climbs out of the tree (``../../x`` from the top) is refused: it can never
  resolve inside the published CID, and the ingest engine rejects it too.
* **Hard links** inside the tree are kept as hard links: the first path of an inode in
  sort order is stored as a regular file, every later path as a hard link (type ``1``,
  size 0) to it. A file whose other links are outside the tree (or excluded) is a plain
  file. Note that copying a tree with a tool that splits hard links changes the CID.
* **Refused**: FIFOs, sockets and device nodes (:class:`~rcds.errors.InputError` naming
  them), names that are not valid UTF-8, unreadable files, files that change while
  being packed.
* **gzip**: written with :mod:`zlib` directly: a 10-byte header with no name, mtime 0,
  XFL 0, OS 255 ("unknown"), then raw deflate at level :data:`GZIP_LEVEL` (window 15,
  memLevel 8, default strategy), then CRC-32 and size.

The deflate bytes depend on the zlib implementation: stock zlib is stable across
versions, but zlib-ng (used by some distributions) compresses differently. Hence
:class:`PackResult` also carries ``tar_sha256``, a digest of the uncompressed tar stream
that is independent of the compressor.

Memory use is constant in the size of the files (contents are copied in blocks of
:data:`BLOCK_SIZE`) and linear in the number of entries (the listing is sorted).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
import stat
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from rcds.errors import ConfigError, InputError

FIXED_MTIME: Final = 946684800
"""mtime of every member: 2000-01-01T00:00:00Z."""
GZIP_LEVEL: Final = 6
"""deflate level of the gzip stream (part of the profile: changing it changes every CID)."""
BLOCK_SIZE: Final = 1 << 20
"""Bytes read from a file at a time."""

_RECORD: Final = 10240
_BLOCK: Final = 512
_USTAR_MAX_SIZE: Final = 8**11
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_GROUP_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")

ProgressCallback = Callable[[int], None]
"""Called with the number of compressed bytes written so far."""


@dataclass(frozen=True, slots=True)
class PackResult:
    """What :func:`pack_directory` wrote.

    ``sha256`` and ``size`` describe the tar.gz bytes (the CID digest); ``members`` counts
    tar members (pax extended headers not included); ``tar_sha256`` and ``tar_size``
    describe the uncompressed tar stream.
    """

    sha256: str
    size: int
    members: int
    tar_sha256: str
    tar_size: int


@dataclass(frozen=True, slots=True)
class _Entry:
    key: bytes
    rel: str
    path: str
    st: os.stat_result


class _Sink:
    """Tar bytes in; gzip bytes out, hashed, counted and reported."""

    def __init__(self, out: BinaryIO, progress: ProgressCallback | None) -> None:
        self._out = out
        self._progress = progress
        self._sha = hashlib.sha256()
        self._tar_sha = hashlib.sha256()
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        self._crc = 0
        self.size = 0
        self.tar_size = 0
        self._emit(_GZIP_HEADER)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._tar_sha.update(data)
        self.tar_size += len(data)
        self._emit(self._z.compress(data))

    def finish(self, members: int) -> PackResult:
        """Write the end-of-archive blocks, the record padding and the gzip trailer."""
        self.write(bytes(2 * _BLOCK + (-(self.tar_size + 2 * _BLOCK) % _RECORD)))
        self._emit(self._z.flush(zlib.Z_FINISH))
        self._emit(struct.pack("<II", self._crc, self.tar_size & 0xFFFFFFFF))
        return PackResult(self._sha.hexdigest(), self.size, members, self._tar_sha.hexdigest(), self.tar_size)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        view = memoryview(data)
        while view:
            n = self._out.write(view)
            if n <= 0:
                raise OSError("output stream accepted no bytes")
            view = view[n:]
        self._sha.update(data)
        self.size += len(data)
        if self._progress is not None:
            self._progress(self.size)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("ascii") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode("ascii") + body


def _ustar(
    name: bytes, typeflag: bytes, mode: int, size: int, linkname: bytes, mtime: int = FIXED_MTIME
) -> bytes:
    h = bytearray(_BLOCK)
    h[0 : len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % mtime
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157 : 157 + len(linkname)] = linkname
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _fits(field: bytes) -> bool:
    return len(field) <= 100 and field.isascii()


def _fallback(field: bytes) -> bytes:
    return field.decode("utf-8").encode("ascii", "replace")[:100]


def _header(name: str, typeflag: bytes, mode: int, size: int = 0, linkname: str = "") -> bytes:
    """Encode one member's header: an optional pax header, then the ustar header."""
    name_b, link_b = name.encode("utf-8"), linkname.encode("utf-8")
    records: list[bytes] = []
    if not _fits(name_b):
        records.append(_pax_record("path", name_b))
    if not _fits(link_b):
        records.append(_pax_record("linkpath", link_b))
    if size >= _USTAR_MAX_SIZE:
        records.append(_pax_record("size", str(size).encode("ascii")))
    member = _ustar(
        name_b if _fits(name_b) else _fallback(name_b),
        typeflag,
        mode,
        size if size < _USTAR_MAX_SIZE else 0,
        link_b if _fits(link_b) else _fallback(link_b),
    )
    if not records:
        return member
    body = b"".join(records)
    pax = _ustar(b"././@PaxHeader", b"x", 0, len(body), b"", mtime=0)
    return pax + body + bytes(-len(body) % _BLOCK) + member


def _check_patterns(patterns: Sequence[str]) -> list[tuple[str, bool, bool]]:
    out = []
    for p in patterns:
        pat = p.rstrip("/")
        if not pat:
            raise ConfigError(f"exclude pattern {p!r} is empty; give a glob such as '*.log' or '.git/'")
        out.append((pat.lstrip("/"), p.endswith("/"), "/" in pat))
    return out


def _excluded(rel: str, name: str, is_dir: bool, patterns: list[tuple[str, bool, bool]]) -> bool:
    for pat, dir_only, anchored in patterns:
        if dir_only and not is_dir:
            continue
        if fnmatch.fnmatchcase(rel if anchored else name, pat):
            return True
    return False


def _walk(root: str, patterns: list[tuple[str, bool, bool]], skip: tuple[int, int] | None) -> list[_Entry]:
    """List everything below ``root`` (not following symlinks), minus exclusions."""
    entries: list[_Entry] = []
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                found = list(it)
        except OSError as exc:
            raise InputError(
                f"cannot list directory {prefix or '.'!r} ({exc.strerror}); "
                "fix its permissions or exclude it",
                prefix.rstrip("/") or ".",
            ) from None
        for de in found:
            rel = prefix + de.name
            try:
                key = rel.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(de.path).decode("utf-8", "backslashreplace")
                raise InputError(f"file name {shown!r} is not valid UTF-8; rename it", shown) from None
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as exc:
                msg = f"cannot examine {rel!r} ({exc.strerror}); pack again or exclude it"
                raise InputError(msg, rel) from None
            is_dir = stat.S_ISDIR(st.st_mode)
            if _excluded(rel, de.name, is_dir, patterns) or (st.st_dev, st.st_ino) == skip:
                continue
            entries.append(_Entry(key, rel, de.path, st))
            if is_dir:
                stack.append((rel + "/", de.path))
    entries.sort(key=lambda e: e.key)
    return entries


def _check_entries(entries: list[_Entry]) -> None:
    special = [
        e.rel
        for e in entries
        if not (stat.S_ISDIR(e.st.st_mode) or stat.S_ISREG(e.st.st_mode) or stat.S_ISLNK(e.st.st_mode))
    ]
    if special:
        shown = ", ".join(repr(s) for s in special[:5]) + (" ..." if len(special) > 5 else "")
        raise InputError(
            f"cannot pack special files (FIFO, socket or device): {shown}; remove or exclude them",
            special[0],
        )


def _link_target(e: _Entry) -> str:
    target = os.readlink(e.path)
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"symlink {e.rel!r} has a target that is not valid UTF-8", e.rel) from None
    if not posixpath.isabs(target):
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(e.rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise InputError(
                f"symlink {e.rel!r} -> {target!r} points outside the packed directory; "
                "make the target absolute or keep it inside the directory",
                e.rel,
            )
    return target


def _copy_file(e: _Entry, sink: _Sink, buf: memoryview) -> None:
    size = e.st.st_size
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    changed = f"file {e.rel!r} changed while it was being packed; pack again when it is stable"
    try:
        fd = os.open(e.path, flags)
    except FileNotFoundError:
        raise InputError(changed, e.rel) from None
    except OSError as exc:
        raise InputError(f"cannot read file {e.rel!r} ({exc.strerror}); fix or exclude it", e.rel) from None
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino, st.st_size) != (e.st.st_dev, e.st.st_ino, size):
            raise InputError(changed, e.rel)
        remaining = size
        while remaining:
            n = f.readinto(buf[: min(len(buf), remaining)])
            if not n:
                raise InputError(changed, e.rel)
            sink.write(buf[:n])
            remaining -= n
    sink.write(bytes(-size % _BLOCK))


def _output_identity(out: BinaryIO) -> tuple[int, int] | None:
    try:
        st = os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return (st.st_dev, st.st_ino)


def pack_directory(
    src: Path,
    out: BinaryIO,
    *,
    exclude: Sequence[str] = (),
    progress: ProgressCallback | None = None,
) -> PackResult:
    """Write a reproducible tar.gz of the directory ``src`` to ``out`` (see the module doc).

    ``exclude`` holds glob patterns (:func:`fnmatch.fnmatchcase`, case-sensitive): a
    pattern without ``/`` matches the name of an entry at any depth (``*.log``, ``.git``),
    a pattern with a ``/`` matches the whole path relative to ``src`` (``build/tmp``; a
    leading ``/`` is ignored), and a trailing ``/`` restricts it to directories. An excluded
    directory is skipped with all its content. If ``out`` is a file inside ``src`` it is
    skipped too. ``progress`` is called with the compressed bytes written so far.

    Raises :class:`~rcds.errors.InputError` for a missing root, special files, non-UTF-8
    names, escaping relative symlinks, unreadable or changing files, and
    :class:`~rcds.errors.ConfigError` for an empty pattern.
    """
    patterns = _check_patterns(exclude)
    root = os.fspath(src)
    if not os.path.isdir(root):
        raise InputError(f"{root!r} is not a directory; give the directory holding the code to publish", root)
    entries = _walk(root, patterns, _output_identity(out))
    _check_entries(entries)
    sink = _Sink(out, progress)
    buf = memoryview(bytearray(BLOCK_SIZE))
    first_path: dict[tuple[int, int], str] = {}
    for e in entries:
        mode = e.st.st_mode
        if stat.S_ISDIR(mode):
            sink.write(_header(e.rel + "/", b"5", 0o755))
        elif stat.S_ISLNK(mode):
            sink.write(_header(e.rel, b"2", 0o777, linkname=_link_target(e)))
        else:
            perm = 0o755 if mode & 0o111 else 0o644
            inode = (e.st.st_dev, e.st.st_ino)
            if e.st.st_nlink > 1 and inode in first_path:
                sink.write(_header(e.rel, b"1", perm, linkname=first_path[inode]))
                continue
            if e.st.st_nlink > 1:
                first_path[inode] = e.rel
            sink.write(_header(e.rel, b"0", perm, e.st.st_size))
            _copy_file(e, sink, buf)
    return sink.finish(len(entries))


def cid_for(group: str, tar_sha256: str) -> str:
    """Return the CID ``<group>/<sha256>`` of a tarball, checking both parts.

    ``group`` is the experiment or VO (letters, digits, ``.``, ``_``, ``-``, not starting
    with a punctuation character, at most 64 characters); ``tar_sha256`` is 64 lowercase
    hex digits, as :attr:`PackResult.sha256` or :func:`hash_file` return.
    """
    if not _GROUP_RE.fullmatch(group):
        raise InputError(
            f"group {group!r} is not valid; use the experiment name (letters, digits, '.', '_', '-')"
        )
    if not _SHA256_RE.fullmatch(tar_sha256):
        raise InputError(f"{tar_sha256!r} is not a sha256 digest (64 lowercase hex digits)")
    return f"{group}/{tar_sha256}"


def hash_file(path: Path) -> str:
    """Return the sha256 hex digest of an existing file (a tarball), read in blocks."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(BLOCK_SIZE))
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(buf[:n])
    except OSError as exc:
        shown = os.fspath(path)
        raise InputError(f"cannot read tarball {shown!r} ({exc.strerror})", shown) from None
    return h.hexdigest()
