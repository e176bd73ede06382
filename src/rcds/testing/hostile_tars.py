"""A corpus of hostile or broken tarballs for testing the ingest engine.

Each :class:`HostileCase` builds its bytes in memory (deterministically) and states what
an ingest engine must do with them:

* ``reject``: refuse the whole upload with an :class:`~rcds.errors.InputError` (nothing
  published); when ``member`` is not None the message must contain it (the member name,
  or for very long names a prefix of it). ``member`` is None when no single member is to
  blame (corrupt compression, not a tar, a header that cannot be trusted).
* ``sanitize``: accept the upload after the repair ``reason`` describes; ``sanitized`` is
  the listing (see :mod:`rcds.testing.tarbuild`) that must come out, with the archive's
  modes minus the stripped bits and the archive's mtimes.

``max_bytes``, when set, is the limit on the total decompressed size the engine should be
configured with for that case (the decompression bomb). This module holds the cases about
paths, links, special files, modes and names; those about broken archives and broken
compression come from :mod:`rcds.testing.broken_tars`. Well-formed counterparts come from
:func:`good_tarballs`. ``python -m rcds.testing.hostile_tars DIR`` writes the corpus to files.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Final

from rcds.testing.broken_tars import BOMB_MAX_BYTES, BROKEN_CASES, payload
from rcds.testing.good_tars import GoodTarball, good_tarballs
from rcds.testing.tarbuild import (
    Compression,
    Expected,
    HostileCase,
    Policy,
    end_of_archive,
    raw_file,
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
    "Policy",
    "case",
    "good_tarballs",
    "payload",
    "write_corpus",
]

_EXT: Final[dict[Compression, str]] = {
    "none": ".tar",
    "gzip": ".tar.gz",
    "bzip2": ".tar.bz2",
    "xz": ".tar.xz",
    "zstd": ".tar.zst",
}


def case(name: str) -> HostileCase:
    """The case called ``name`` (KeyError if there is none)."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(name)


_DIR, _SYM, _LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
_HELLO: Final = b"hello\n"
_SU: Final = b"#!/bin/sh\nexec id\n"
_DIR_OK: Final = Expected("dir", 0o755)


def _file(data: bytes, mode: int = 0o644) -> Expected:
    return Expected("file", mode, len(data), sha1(data))


def _d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return m(name, kind=_DIR, mode=mode)


def _sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return m(name, kind=_SYM, mode=0o777, linkname=target)


def _hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return m(name, kind=_LNK, linkname=target)


_STRUCTURE: list[HostileCase] = [
    # paths that leave the tree
    HostileCase(
        "dotdot",
        "../evil",
        "reject",
        "a '..' member is written above the CID root",
        lambda: tar([m("../evil", _HELLO)]),
    ),
    HostileCase(
        "dotdot_nested",
        "a/../../evil",
        "reject",
        "'..' inside the path climbs above the root",
        lambda: tar([_d("a"), m("a/../../evil", _HELLO)]),
    ),
    HostileCase(
        "absolute_path",
        "/etc/passwd",
        "reject",
        "an absolute member path names a file outside the CID",
        lambda: tar([m("/etc/passwd", b"root::0:0::/:/bin/sh\n")]),
    ),
    HostileCase(
        "pax_path_dotdot",
        "../pax-evil",
        "reject",
        "a pax 'path' record overrides a harmless ustar name with '..'",
        lambda: tar([m("innocent.txt", _HELLO, pax={"path": "../pax-evil"})]),
    ),
    HostileCase(
        "gnu_longname_dotdot",
        "../escaped-",
        "reject",
        "a GNU long-name record hides a '..' path",
        lambda: tar([m("../escaped-" + "x" * 100, _HELLO)], fmt=tarfile.GNU_FORMAT),
    ),
    # links
    HostileCase(
        "symlink_escape_relative",
        "up-link",
        "reject",
        "a relative symlink target climbing above the root",
        lambda: tar([_sym("up-link", "../../..")]),
    ),
    HostileCase(
        "write_through_symlink",
        "etc-link/passwd",
        "reject",
        "a member below a symlink is written through it",
        lambda: tar([_sym("etc-link", "/etc"), m("etc-link/passwd", b"pwned\n")]),
    ),
    HostileCase(
        "hardlink_through_symlink",
        "hl-through",
        "reject",
        "a hard link whose target path goes through a symlink",
        lambda: tar([_sym("etc-link", "/etc"), _hard("hl-through", "etc-link/passwd")]),
    ),
    HostileCase(
        "dir_then_symlink",
        "victim-dir",
        "reject",
        "a directory replaced by a symlink, then written through",
        lambda: tar([_d("victim-dir"), _sym("victim-dir", "/etc"), m("victim-dir/passwd", b"pwned\n")]),
    ),
    HostileCase(
        "hardlink_outside",
        "hl-outside",
        "reject",
        "a hard link to a path above the root",
        lambda: tar([_hard("hl-outside", "../x")]),
    ),
    HostileCase(
        "hardlink_missing",
        "hl-missing",
        "reject",
        "a hard link to a member that is not in the archive",
        lambda: tar([m("a.txt", _HELLO), _hard("hl-missing", "nothere")]),
    ),
    HostileCase(
        "hardlink_to_directory",
        "hl-dir",
        "reject",
        "hard links to directories are not allowed",
        lambda: tar([_d("d"), _hard("hl-dir", "d")]),
    ),
    # special files and modes
    HostileCase(
        "char_device",
        "dev/null",
        "reject",
        "device nodes cannot be published",
        lambda: tar([m("dev/null", kind=tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)]),
    ),
    HostileCase(
        "block_device",
        "dev/sda",
        "reject",
        "device nodes cannot be published",
        lambda: tar([m("dev/sda", kind=tarfile.BLKTYPE, mode=0o660, devmajor=8)]),
    ),
    HostileCase(
        "fifo", "pipe", "reject", "FIFOs cannot be published", lambda: tar([m("pipe", kind=tarfile.FIFOTYPE)])
    ),
    HostileCase(
        "setuid_file",
        "bin/su",
        "sanitize",
        "strip the setuid bit (04755 -> 0755)",
        lambda: tar([_d("bin"), m("bin/su", _SU, mode=0o4755)]),
        sanitized={"bin": _DIR_OK, "bin/su": _file(_SU, 0o755)},
    ),
    HostileCase(
        "setgid_dir",
        "shared",
        "sanitize",
        "strip the setgid bit of a directory (02755 -> 0755)",
        lambda: tar([_d("shared", 0o2755), m("shared/f.txt", _HELLO)]),
        sanitized={"shared": _DIR_OK, "shared/f.txt": _file(_HELLO)},
    ),
    # names
    HostileCase(
        "duplicate_member",
        "a.txt",
        "reject",
        "the same path twice: which content wins is ambiguous",
        lambda: tar([m("a.txt", b"first\n"), m("a.txt", b"second\n")]),
    ),
    HostileCase(
        "file_then_dir",
        "file-or-dir",
        "reject",
        "a path is first a file, then a directory",
        lambda: tar([m("file-or-dir", b"file\n"), _d("file-or-dir"), m("file-or-dir/y", _HELLO)]),
    ),
    HostileCase(
        "nul_in_pax_name",
        "evil",
        "reject",
        "a NUL byte inside a (pax) name",
        lambda: tar([m("evil", _HELLO, pax={"path": "evil\x00.txt"})]),
    ),
    HostileCase(
        "nul_tail_in_ustar_name",
        "ok.txt",
        "sanitize",
        "a ustar name ends at its first NUL; the hidden '../../evil' after it is ignored",
        lambda: raw_file(b"ok.txt\0../../evil", _HELLO) + end_of_archive(),
        sanitized={"ok.txt": _file(_HELLO)},
    ),
    HostileCase(
        "dot_slash_prefix",
        "./top.txt",
        "sanitize",
        "drop './' prefixes and the './' root entry (what `tar -C dir .` writes)",
        lambda: tar([_d("."), m("./top.txt", _HELLO), _d("./sub"), m("./sub/x.txt", _HELLO)]),
        sanitized={"top.txt": _file(_HELLO), "sub": _DIR_OK, "sub/x.txt": _file(_HELLO)},
    ),
    HostileCase(
        "double_slash",
        "a//b/./c.txt",
        "sanitize",
        "collapse '//' and inner '/./' (a//b/./c.txt -> a/b/c.txt)",
        lambda: tar([_d("a"), _d("a//b"), m("a//b/./c.txt", _HELLO)]),
        sanitized={"a": _DIR_OK, "a/b": _DIR_OK, "a/b/c.txt": _file(_HELLO)},
    ),
    HostileCase(
        "trailing_slash_file",
        "a.txt/",
        "reject",
        "a regular file (type '0') whose name ends in '/'",
        lambda: tar([m("a.txt/", _HELLO)]),
    ),
    HostileCase(
        "v7_dir_trailing_slash",
        "olddir/",
        "sanitize",
        "an old-style (type NUL) member ending in '/' is a directory",
        lambda: (
            raw_header(b"olddir/", typeflag=b"\0", mode=0o755)
            + raw_file(b"olddir/f.txt", _HELLO)
            + end_of_archive()
        ),
        sanitized={"olddir": _DIR_OK, "olddir/f.txt": _file(_HELLO)},
    ),
    HostileCase(
        "non_utf8_name",
        "bad",
        "reject",
        "names must be valid UTF-8 (bytes 0xff 0xfe)",
        lambda: raw_file(b"bad\xff\xfe.txt", _HELLO) + end_of_archive(),
    ),
    HostileCase(
        "overlong_component",
        "long/ccc",
        "reject",
        "a path component of 304 bytes (NAME_MAX is 255)",
        lambda: tar([m("long/" + "c" * 300 + ".txt", _HELLO)]),
    ),
    HostileCase(
        "overlong_path",
        "seg00-ppp",
        "reject",
        "a path of 4463 bytes (PATH_MAX is 4096), every component short enough",
        lambda: tar([m("/".join(f"seg{i:02d}-" + "p" * 240 for i in range(18)), _HELLO)]),
    ),
    HostileCase(
        "deep_nesting",
        "d/d/d/d",
        "reject",
        "301 path levels (more than 256)",
        lambda: tar([m("d/" * 300 + "bottom.txt", _HELLO)]),
    ),
]

CASES: list[HostileCase] = [*_STRUCTURE, *BROKEN_CASES]
"""Every case, in a fixed order."""


def write_corpus(directory: Path) -> list[Path]:
    """Write every case to ``directory`` as ``NN-name.tar[.gz|.bz2|.xz|.zst]``, plus an
    ``index.json`` describing them; return the tarball paths in case order."""
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
