"""A corpus of hostile or broken tarballs for testing the ingest engine.

Each :class:`HostileCase` builds its bytes in memory (deterministically) and states what
an ingest engine must do with them:

* ``reject``: refuse the whole upload with an :class:`~rcds.errors.InputError` (nothing
  published); when ``member`` is not None the message must contain it (it is the member
  name, or for very long names a prefix of it).
* ``sanitize``: accept the upload after the repair ``reason`` describes; ``sanitized`` is
  the listing (see :mod:`rcds.testing.tarbuild`) that must come out.

``max_bytes``, when set, is the limit on the total decompressed size the engine should be
configured with for that case (the decompression bomb). Well-formed counterparts are in
:func:`good_tarballs`. Run ``python -m rcds.testing.hostile_tars DIR`` to write the corpus
to files.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from rcds.testing.good_tars import GoodTarball, good_tarballs
from rcds.testing.tarbuild import (
    Compression,
    Expected,
    compress,
    crc32_of_zeros,
    end_of_archive,
    gzip_raw,
    pad,
    raw_header,
    sha1,
    tar,
)
from rcds.testing.tarbuild import member as m

__all__ = [
    "BOMB_MAX_BYTES",
    "CASES",
    "GoodTarball",
    "HostileCase",
    "case",
    "good_tarballs",
    "payload",
    "write_corpus",
]

Policy = Literal["reject", "sanitize"]

BOMB_PART: Final = 128 << 20
BOMB_PARTS: Final = 16
BOMB_MAX_BYTES: Final = 256 << 20
"""Recommended decompressed-size limit for the bomb (it inflates to 2 GiB)."""

_DIR, _SYM, _LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
_EXT: Final[dict[Compression, str]] = {
    "none": ".tar",
    "gzip": ".tar.gz",
    "bzip2": ".tar.bz2",
    "xz": ".tar.xz",
    "zstd": ".tar.zst",
}


@dataclass(frozen=True, slots=True)
class HostileCase:
    """One hostile tarball: how to build it and what the engine must do with it."""

    name: str
    build: Callable[[], bytes]
    member: str | None
    policy: Policy
    reason: str
    compression: Compression = "none"
    max_bytes: int | None = None
    sanitized: Mapping[str, Expected] | None = None


CASES: list[HostileCase] = []
"""Every case, in a fixed order."""


def _case(
    name: str,
    member: str | None,
    policy: Policy,
    reason: str,
    compression: Compression = "none",
    max_bytes: int | None = None,
    sanitized: Mapping[str, Expected] | None = None,
) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    def register(build: Callable[[], bytes]) -> Callable[[], bytes]:
        CASES.append(HostileCase(name, build, member, policy, reason, compression, max_bytes, sanitized))
        return build

    return register


def case(name: str) -> HostileCase:
    """The case called ``name``."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(name)


def _file(data: bytes, mode: int = 0o644) -> Expected:
    return Expected("file", mode, len(data), sha1(data))


def _header_only(name: str, size: int) -> bytes:
    """The header(s) of a regular file claiming ``size`` bytes, without its data."""
    ti = m(name)[0]
    ti.size = size
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_DIR_OK: Final = Expected("dir", 0o755)
_HELLO: Final = b"hello\n"

# --- paths that leave the tree -------------------------------------------------------


@_case("dotdot", "../evil", "reject", "a '..' member would be written above the CID root")
def _dotdot() -> bytes:
    return tar([m("../evil", _HELLO)])


@_case("dotdot_nested", "a/../../evil", "reject", "'..' inside the path climbs above the root")
def _dotdot_nested() -> bytes:
    return tar([m("a", kind=_DIR, mode=0o755), m("a/../../evil", _HELLO)])


@_case("absolute_path", "/etc/passwd", "reject", "an absolute member path names a file outside the CID")
def _absolute() -> bytes:
    return tar([m("/etc/passwd", b"root::0:0::/:/bin/sh\n")])


@_case("pax_path_dotdot", "../pax-evil", "reject", "the pax 'path' record overrides a harmless ustar name")
def _pax_path() -> bytes:
    return tar([m("innocent.txt", _HELLO, pax={"path": "../pax-evil"})])


@_case("gnu_longname_dotdot", "../escaped-", "reject", "a GNU long-name record hides a '..' path")
def _gnu_longname() -> bytes:
    return tar([m("../escaped-" + "x" * 100, _HELLO)], fmt=tarfile.GNU_FORMAT)


# --- links ---------------------------------------------------------------------------


@_case("symlink_escape_relative", "link", "reject", "a relative symlink target climbing above the root")
def _symlink_escape() -> bytes:
    return tar([m("link", kind=_SYM, mode=0o777, linkname="../../..")])


@_case("write_through_symlink", "link/passwd", "reject", "a member below a symlink writes through it")
def _write_through() -> bytes:
    return tar([m("link", kind=_SYM, mode=0o777, linkname="/etc"), m("link/passwd", b"pwned\n")])


@_case("hardlink_through_symlink", "h", "reject", "a hard link whose target path goes through a symlink")
def _hardlink_through() -> bytes:
    return tar([m("link", kind=_SYM, mode=0o777, linkname="/etc"), m("h", kind=_LNK, linkname="link/passwd")])


@_case("dir_then_symlink", "d", "reject", "a directory replaced by a symlink, then written through")
def _dir_then_symlink() -> bytes:
    return tar(
        [
            m("d", kind=_DIR, mode=0o755),
            m("d", kind=_SYM, mode=0o777, linkname="/etc"),
            m("d/passwd", b"pwned\n"),
        ]
    )


@_case("hardlink_outside", "h", "reject", "a hard link to a path above the root")
def _hardlink_outside() -> bytes:
    return tar([m("h", kind=_LNK, linkname="../x")])


@_case("hardlink_missing", "h", "reject", "a hard link to a member that is not in the archive")
def _hardlink_missing() -> bytes:
    return tar([m("a.txt", _HELLO), m("h", kind=_LNK, linkname="nothere")])


@_case("hardlink_to_directory", "h", "reject", "hard links to directories are not allowed")
def _hardlink_dir() -> bytes:
    return tar([m("d", kind=_DIR, mode=0o755), m("h", kind=_LNK, linkname="d")])


# --- special files and modes -----------------------------------------------------------


@_case("char_device", "dev/null", "reject", "device nodes cannot be published")
def _chr() -> bytes:
    return tar([m("dev/null", kind=tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)])


@_case("block_device", "dev/sda", "reject", "device nodes cannot be published")
def _blk() -> bytes:
    return tar([m("dev/sda", kind=tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0)])


@_case("fifo", "pipe", "reject", "FIFOs cannot be published")
def _fifo() -> bytes:
    return tar([m("pipe", kind=tarfile.FIFOTYPE, mode=0o644)])


_SU: Final = b"#!/bin/sh\nexec id\n"


@_case(
    "setuid_file",
    "bin/su",
    "sanitize",
    "strip the setuid bit (04755 -> 0755)",
    sanitized={"bin": _DIR_OK, "bin/su": _file(_SU, 0o755)},
)
def _setuid() -> bytes:
    return tar([m("bin", kind=_DIR, mode=0o755), m("bin/su", _SU, mode=0o4755)])


@_case(
    "setgid_dir",
    "shared",
    "sanitize",
    "strip the setgid bit of a directory (02755 -> 0755)",
    sanitized={"shared": _DIR_OK, "shared/f.txt": _file(_HELLO)},
)
def _setgid() -> bytes:
    return tar([m("shared", kind=_DIR, mode=0o2755), m("shared/f.txt", _HELLO)])


# --- names ---------------------------------------------------------------------------


@_case("duplicate_member", "a.txt", "reject", "the same path twice: which content wins is ambiguous")
def _duplicate() -> bytes:
    return tar([m("a.txt", b"first\n"), m("a.txt", b"second\n")])


@_case("file_then_dir", "x", "reject", "a path is first a file, then a directory")
def _file_then_dir() -> bytes:
    return tar([m("x", b"file\n"), m("x", kind=_DIR, mode=0o755), m("x/y", _HELLO)])


@_case("nul_in_pax_name", "evil", "reject", "a NUL byte inside a (pax) name")
def _nul_pax() -> bytes:
    return tar([m("evil", _HELLO, pax={"path": "evil\x00.txt"})])


@_case(
    "nul_tail_in_ustar_name",
    "ok.txt",
    "sanitize",
    "a ustar name ends at its first NUL; the hidden '../../evil' after it is ignored",
    sanitized={"ok.txt": _file(_HELLO)},
)
def _nul_ustar() -> bytes:
    return raw_header(b"ok.txt\0../../evil", size=len(_HELLO)) + pad(_HELLO) + end_of_archive()


@_case(
    "dot_slash_prefix",
    "./top.txt",
    "sanitize",
    "drop './' prefixes and the './' root entry (what `tar -C dir .` writes)",
    sanitized={"top.txt": _file(_HELLO), "sub": _DIR_OK, "sub/x.txt": _file(_HELLO)},
)
def _dot_slash() -> bytes:
    return tar(
        [
            m(".", kind=_DIR, mode=0o755),
            m("./top.txt", _HELLO),
            m("./sub", kind=_DIR, mode=0o755),
            m("./sub/x.txt", _HELLO),
        ]
    )


@_case(
    "double_slash",
    "a//b/./c.txt",
    "sanitize",
    "collapse '//' and inner '/./' (a//b/./c.txt -> a/b/c.txt)",
    sanitized={"a": _DIR_OK, "a/b": _DIR_OK, "a/b/c.txt": _file(_HELLO)},
)
def _double_slash() -> bytes:
    return tar([m("a", kind=_DIR, mode=0o755), m("a//b", kind=_DIR, mode=0o755), m("a//b/./c.txt", _HELLO)])


@_case("trailing_slash_file", "a.txt/", "reject", "a regular file (type '0') whose name ends in '/'")
def _trailing_slash() -> bytes:
    return tar([m("a.txt/", _HELLO)])


@_case(
    "v7_dir_trailing_slash",
    "olddir/",
    "sanitize",
    "an old-style (type NUL) member ending in '/' is a directory",
    sanitized={"olddir": _DIR_OK, "olddir/f.txt": _file(_HELLO)},
)
def _v7_dir() -> bytes:
    return (
        raw_header(b"olddir/", typeflag=b"\0", mode=0o755)
        + raw_header(b"olddir/f.txt", size=len(_HELLO))
        + pad(_HELLO)
        + end_of_archive()
    )


@_case("non_utf8_name", "bad", "reject", "names must be valid UTF-8 (bytes 0xff 0xfe)")
def _non_utf8() -> bytes:
    return raw_header(b"bad\xff\xfe.txt", size=len(_HELLO)) + pad(_HELLO) + end_of_archive()


@_case("overlong_component", "long/ccc", "reject", "a path component of 300 bytes (NAME_MAX is 255)")
def _long_component() -> bytes:
    return tar([m("long/" + "c" * 300 + ".txt", _HELLO)])


@_case("overlong_path", "seg00-ppp", "reject", "a path of more than 4096 bytes (PATH_MAX)")
def _long_path() -> bytes:
    return tar([m("/".join(f"seg{i:02d}-" + "p" * 240 for i in range(18)), _HELLO)])


@_case("deep_nesting", "d/d/d/d", "reject", "300 directory levels (more than 256)")
def _deep() -> bytes:
    return tar([m("d/" * 300 + "bottom.txt", _HELLO)])


# --- broken archives -----------------------------------------------------------------


@_case("truncated_data", "big.bin", "reject", "the archive ends in the middle of a member's data")
def _truncated_data() -> bytes:
    return tar([m("big.bin", random.Random(1).randbytes(10000))])[: 512 + 5000]


@_case("truncated_header", None, "reject", "the archive ends in the middle of a header")
def _truncated_header() -> bytes:
    return tar([m("ok.txt", _HELLO)])[:1024] + raw_header(b"cut.txt", size=3)[:200]


@_case("bad_checksum", None, "reject", "a header whose checksum does not match")
def _bad_checksum() -> bytes:
    return raw_header(b"file.txt", size=len(_HELLO), checksum=0o12345) + pad(_HELLO) + end_of_archive()


@_case("huge_size_claim", "huge.bin", "reject", "a header claims 1 TiB and the archive ends right after")
def _huge() -> bytes:
    return _header_only("huge.bin", 1 << 40)


@_case("pax_size_not_a_number", "victim.txt", "reject", "a pax 'size' record that is not a number")
def _pax_size_nan() -> bytes:
    return tar([m("victim.txt", _HELLO, pax={"size": "abc"}), m("next.txt", _HELLO)])


@_case("pax_size_negative", "victim.txt", "reject", "a negative pax 'size' (naive readers seek back)")
def _pax_size_negative() -> bytes:
    return tar([m("victim.txt", _HELLO, pax={"size": "-1024"}), m("next.txt", _HELLO)])


@_case("pax_record_length_bogus", None, "reject", "a pax record whose length runs past the header")
def _pax_record_length() -> bytes:
    body = b"9999 path=victim.txt\n"
    return (
        raw_header(b"././@PaxHeader", typeflag=b"x", size=len(body))
        + pad(body)
        + raw_header(b"victim.txt", size=len(_HELLO))
        + pad(_HELLO)
        + end_of_archive()
    )


@_case("not_a_tar", None, "reject", "random bytes, no archive at all")
def _not_a_tar() -> bytes:
    return random.Random(99).randbytes(4096)


@_case("gzip_of_garbage", None, "reject", "a valid gzip stream whose content is not a tar", "gzip")
def _gzip_garbage() -> bytes:
    return compress(random.Random(98).randbytes(4096), "gzip")


@_case("empty_input", None, "reject", "zero bytes")
def _empty() -> bytes:
    return b""


# --- broken compression ----------------------------------------------------------------

_WORDS: Final = "alpha beta gamma delta muon pion kaon neutrino detector trigger event run".split()


@functools.cache
def payload() -> bytes:
    """A valid, fairly compressible ~100 KB tar used under the corrupt-compression cases."""
    rng = random.Random(1234)
    return tar([m(f"src/f{i}.txt", " ".join(rng.choices(_WORDS, k=2000)).encode()) for i in range(8)])


def _corrupt(fmt: Compression) -> Callable[[], bytes]:
    def build() -> bytes:
        data = bytearray(compress(payload(), fmt))
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
        return bytes(data)

    return build


for _fmt in ("gzip", "bzip2", "xz", "zstd"):
    _case(f"corrupt_{_fmt}", None, "reject", f"16 flipped bytes in the middle of the {_fmt} stream", _fmt)(
        _corrupt(_fmt)
    )


@_case("truncated_gzip", None, "reject", "the gzip stream stops half way (no trailer)", "gzip")
def _truncated_gzip() -> bytes:
    data = compress(payload(), "gzip")
    return data[: len(data) // 2]


@_case(
    "decompression_bomb",
    None,
    "reject",
    f"~2 MB of gzip inflating to 2 GiB (16 x 128 MiB of zeros); limit {BOMB_MAX_BYTES >> 20} MiB",
    "gzip",
    max_bytes=BOMB_MAX_BYTES,
)
@functools.cache
def _bomb() -> bytes:
    # After a full flush deflate output depends only on the input that follows, so one
    # compressed MiB of zeros can be repeated instead of compressing 2 GiB.
    zeros = bytes(1 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero_block = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts: list[bytes] = []
    crc = size = 0
    for i in range(BOMB_PARTS):
        header = _header_only(f"zeros/part{i:02d}.bin", BOMB_PART)
        parts.append(z.compress(header) + z.flush(zlib.Z_FULL_FLUSH))
        parts.append(zero_block * (BOMB_PART >> 20))
        crc = crc32_of_zeros(BOMB_PART, zlib.crc32(header, crc))
        size += len(header) + BOMB_PART
    tail = bytes(2 * 512 + (-(size + 1024) % 10240))
    parts.append(z.compress(tail) + z.flush(zlib.Z_FINISH))
    return gzip_raw(b"".join(parts), zlib.crc32(tail, crc), size + len(tail))


def write_corpus(directory: Path) -> list[Path]:
    """Write every case to ``directory`` (``NN-name.tar[.gz|...]``) plus ``index.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    index = []
    for i, c in enumerate(CASES):
        path = directory / f"{i:02d}-{c.name}{_EXT[c.compression]}"
        path.write_bytes(c.build())
        paths.append(path)
        index.append(
            {
                "file": path.name,
                "name": c.name,
                "policy": c.policy,
                "member": c.member,
                "reason": c.reason,
                "max_bytes": c.max_bytes,
            }
        )
    (directory / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")):
        print(p)
