"""The hostile and good tarball corpora are what they claim to be."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from rcds.testing.broken_tars import BOMB_PART, BOMB_PARTS, payload
from rcds.testing.hostile_tars import (
    BOMB_MAX_BYTES,
    CASES,
    GoodTarball,
    HostileCase,
    case,
    good_tarballs,
    write_corpus,
)
from rcds.testing.tarbuild import (
    COMPRESSIONS,
    Expected,
    compress,
    decompress,
    detect,
    listing_of_dir,
    listing_of_tar,
)

Check = Callable[[bytes], None]


def plain(data: bytes) -> bytes:
    return decompress(data, detect(data) or "none")


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(plain(data)), mode="r:") as tf:
        return tf.getmembers()


def names(data: bytes) -> list[str]:
    return [mi.name for mi in members(data)]


def escapes(path: str) -> bool:
    p = posixpath.normpath(path)
    return p == ".." or p.startswith("../") or p.startswith("/")


def sanitized_listing(data: bytes, *, strip: int = 0o7000) -> dict[str, Expected]:
    """tarfile's view of an archive after the sanitize rules: clean paths, no special bits."""
    out = {}
    for name, e in listing_of_tar(data).items():
        clean = posixpath.normpath(name)
        if clean != ".":
            out[clean] = dataclasses.replace(e, mode=e.mode & ~strip)
    return out


def not_a_tar(data: bytes) -> None:
    with pytest.raises(tarfile.ReadError):
        members(data)


def _expect_one(data: bytes, kind: str) -> tarfile.TarInfo:
    (only,) = [mi for mi in members(data) if getattr(mi, kind)()]
    return only


def check_corrupt(fmt: str) -> Check:
    def check(data: bytes) -> None:
        assert detect(data) == fmt
        with pytest.raises(Exception) as exc:  # each codec raises its own type
            decompress(data, detect(data) or "none")
        assert not isinstance(exc.value, AssertionError)

    return check


def check_bomb(data: bytes) -> None:
    assert len(data) < 4 << 20
    with pytest.raises(ValueError, match="beyond"):
        decompress(data, "gzip", limit=BOMB_MAX_BYTES)
    d = zlib.decompressobj(31)  # gzip wrapper: zlib checks CRC-32 and ISIZE at the end
    total, first = 0, b""
    view = data
    while view and not d.eof:
        out = d.decompress(view, 1 << 24)
        view = d.unconsumed_tail
        if not first:
            first = out[:512]
        total += len(out)
    out = d.flush()
    total += len(out)
    assert d.eof and not d.unused_data
    assert total > BOMB_PARTS * BOMB_PART >= 2 << 30
    header = tarfile.TarInfo.frombuf(first, "utf-8", "surrogateescape")
    assert header.size == BOMB_PART <= 1 << 30


def assert_true(value: bool) -> None:
    assert value


def raw_name(data: bytes) -> bytes:
    return data[:100].rstrip(b"\0")


def check_bad_checksum(data: bytes) -> None:
    not_a_tar(data)
    assert int(data[148:154], 8) != sum(data[:148]) + 8 * 32 + sum(data[156:512])


def check_random(data: bytes) -> None:
    assert detect(data) is None
    not_a_tar(data)


def check_gzip_of_garbage(data: bytes) -> None:
    assert len(gzip.decompress(data)) == 4096
    not_a_tar(data)


def check_empty(data: bytes) -> None:
    assert data == b""
    not_a_tar(data)


def check_huge(data: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        first = tf.next()
        assert first is not None and first.name == "huge.bin" and first.size == 1 << 40
    assert len(data) < 4096
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        members(data)


def check_truncated_gzip(data: bytes) -> None:
    with pytest.raises(EOFError):
        decompress(data, "gzip")


CHECKS: dict[str, Check] = {
    "dotdot": lambda d: assert_true(names(d) == ["../evil"]),
    "dotdot_nested": lambda d: assert_true(escapes(names(d)[1]) and not names(d)[1].startswith("..")),
    "absolute_path": lambda d: assert_true(names(d) == ["/etc/passwd"]),
    "pax_path_dotdot": lambda d: assert_true(names(d) == ["../pax-evil"] and b"innocent.txt" in d),
    "gnu_longname_dotdot": lambda d: assert_true(
        names(d)[0].startswith("../escaped-") and b"././@LongLink" in d
    ),
    "symlink_escape_relative": lambda d: assert_true(
        _expect_one(d, "issym").linkname == "../../.." and escapes("../../..")
    ),
    "write_through_symlink": lambda d: assert_true(
        [(mi.name, mi.type) for mi in members(d)]
        == [("etc-link", tarfile.SYMTYPE), ("etc-link/passwd", tarfile.REGTYPE)]
    ),
    "hardlink_through_symlink": lambda d: assert_true(
        _expect_one(d, "issym").linkname == "/etc" and _expect_one(d, "islnk").linkname == "etc-link/passwd"
    ),
    "dir_then_symlink": lambda d: assert_true(
        [(mi.name, mi.type) for mi in members(d)]
        == [
            ("victim-dir", tarfile.DIRTYPE),
            ("victim-dir", tarfile.SYMTYPE),
            ("victim-dir/passwd", tarfile.REGTYPE),
        ]
    ),
    "hardlink_outside": lambda d: assert_true(escapes(_expect_one(d, "islnk").linkname)),
    "hardlink_missing": lambda d: assert_true(_expect_one(d, "islnk").linkname not in names(d)),
    "hardlink_to_directory": lambda d: assert_true(
        _expect_one(d, "islnk").linkname == _expect_one(d, "isdir").name
    ),
    "char_device": lambda d: assert_true(
        (_expect_one(d, "ischr").devmajor, _expect_one(d, "ischr").devminor) == (1, 3)
    ),
    "block_device": lambda d: assert_true(_expect_one(d, "isblk").name == "dev/sda"),
    "fifo": lambda d: assert_true(_expect_one(d, "isfifo").name == "pipe"),
    "setuid_file": lambda d: assert_true(bool(members(d)[1].mode & stat.S_ISUID)),
    "setgid_dir": lambda d: assert_true(bool(_expect_one(d, "isdir").mode & stat.S_ISGID)),
    "duplicate_member": lambda d: assert_true(
        names(d) == ["a.txt", "a.txt"] and listing_of_tar(d)["a.txt"].size == len(b"second\n")
    ),
    "file_then_dir": lambda d: assert_true(
        [(mi.name, mi.type) for mi in members(d)]
        == [
            ("file-or-dir", tarfile.REGTYPE),
            ("file-or-dir", tarfile.DIRTYPE),
            ("file-or-dir/y", tarfile.REGTYPE),
        ]
    ),
    "nul_in_pax_name": lambda d: assert_true(names(d) == ["evil\x00.txt"]),
    "nul_tail_in_ustar_name": lambda d: assert_true(
        raw_name(d) == b"ok.txt\0../../evil" and names(d) == ["ok.txt"]
    ),
    "dot_slash_prefix": lambda d: assert_true(all(n == "." or n.startswith("./") for n in names(d))),
    "double_slash": lambda d: assert_true("a//b/./c.txt" in names(d)),
    "trailing_slash_file": lambda d: assert_true(
        members(d)[0].type == tarfile.REGTYPE and names(d) == ["a.txt/"]
    ),
    "v7_dir_trailing_slash": lambda d: assert_true(
        d[156] == 0 and raw_name(d) == b"olddir/" and members(d)[0].isdir()
    ),
    "non_utf8_name": lambda d: assert_true(
        b"\xff\xfe" in raw_name(d) and not raw_name(d).decode("utf-8", "replace").isascii()
    ),
    "overlong_component": lambda d: assert_true(max(len(p.encode()) for p in names(d)[0].split("/")) > 255),
    "overlong_path": lambda d: assert_true(
        len(names(d)[0].encode()) > 4096 and max(len(p) for p in names(d)[0].split("/")) <= 255
    ),
    "deep_nesting": lambda d: assert_true(names(d)[0].count("/") > 256),
    "truncated_data": lambda d: assert_true(
        tarfile.TarInfo.frombuf(d[:512], "utf-8", "strict").size > len(d) - 512
    ),
    "truncated_header": lambda d: assert_true(len(d) % 512 == 200 and d[1024:1031] == b"cut.txt"),
    "bad_checksum": check_bad_checksum,
    "huge_size_claim": check_huge,
    "pax_size_not_a_number": lambda d: assert_true(members(d)[0].pax_headers["size"] == "abc"),
    "pax_size_negative": lambda d: assert_true(members(d)[0].pax_headers["size"] == "-1024"),
    "pax_record_length_bogus": lambda d: assert_true(
        d[156:157] == b"x" and int(d[512:].split(b" ")[0]) > int(d[124:135], 8)
    ),
    "not_a_tar": check_random,
    "gzip_of_garbage": check_gzip_of_garbage,
    "empty_input": check_empty,
    "truncated_gzip": check_truncated_gzip,
    "decompression_bomb": check_bomb,
    **{f"corrupt_{fmt}": check_corrupt(fmt) for fmt in ("gzip", "bzip2", "xz", "zstd")},
}


def test_corpus_shape() -> None:
    assert len(CASES) >= 24
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.name for c in CASES} == set(CHECKS)
    for c in CASES:
        assert c.policy in ("reject", "sanitize") and c.reason
        assert (c.sanitized is not None) == (c.policy == "sanitize"), c.name
    assert case("decompression_bomb").max_bytes == BOMB_MAX_BYTES
    with pytest.raises(KeyError):
        case("nope")


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.name)
def test_case_is_what_it_claims(c: HostileCase) -> None:
    data = c.build()
    assert isinstance(data, bytes)
    assert c.build() == data  # deterministic
    if data:
        assert detect(data) in (c.compression, None)
    CHECKS[c.name](data)
    if c.member is not None:
        assert c.member.encode() in plain(data), "the blamed member is really in the archive"
    if c.sanitized is not None:
        assert sanitized_listing(data) == c.sanitized


def test_corrupt_cases_come_from_a_valid_payload() -> None:
    for fmt in COMPRESSIONS:
        assert decompress(compress(payload(), fmt), fmt) == payload()
    assert len(members(payload())) == 8


def test_write_corpus(tmp_path: Path) -> None:
    small = [c for c in CASES if c.max_bytes is None]
    paths = write_corpus(tmp_path / "corpus")
    assert len(paths) == len(CASES)
    index = json.loads((tmp_path / "corpus/index.json").read_text())
    assert [e["name"] for e in index] == [c.name for c in CASES]
    for path, c in zip(paths, CASES, strict=True):
        if c in small:
            assert path.read_bytes() == c.build()
    assert paths[0].name == "00-dotdot.tar"


GOOD = good_tarballs()


@pytest.mark.parametrize("g", GOOD, ids=lambda g: g.name)
def test_good_tarball_listing(g: GoodTarball, tmp_path: Path) -> None:
    assert detect(g.data) == g.compression
    assert listing_of_tar(g.data) == g.listing
    with tarfile.open(fileobj=io.BytesIO(plain(g.data)), mode="r:") as tf:
        tf.extractall(tmp_path, filter="fully_trusted")
    got = listing_of_dir(tmp_path)
    assert set(got) == set(g.listing)
    for path, want in g.listing.items():
        have = got[path]
        if want.type == "symlink":  # tarfile does not set symlink times
            have = dataclasses.replace(have, mtime=want.mtime)
        assert have == want, path


def test_good_tarballs_cover_the_features() -> None:
    assert {g.compression for g in GOOD} == set(COMPRESSIONS)
    assert {g.dialect for g in GOOD} == {"pax", "gnu", "ustar"}
    listing = GOOD[0].listing
    entries = list(listing.items())
    links = [(p, e.target or "") for p, e in entries if e.type == "hardlink"]
    assert any(posixpath.dirname(p) == posixpath.dirname(t) for p, t in links)
    assert any(posixpath.dirname(p) != posixpath.dirname(t) for p, t in links)
    targets = [e.target or "" for _, e in entries if e.type == "symlink"]
    assert any(t.startswith("/") for t in targets) and any(not t.startswith("/") for t in targets)
    files = [e for _, e in entries if e.type == "file"]
    assert any(e.size == 0 for e in files)
    assert any(e.mode == 0o600 for e in files) and any(e.mode & 0o111 for e in files)
    assert any(not p.isascii() for p in listing)
    assert any(len(p.encode()) > 100 for p in listing)
    dirs = [p for p, e in entries if e.type == "dir"]
    assert any(not any(q.startswith(p + "/") for q in listing) for p in dirs)
    assert len({e.mtime for _, e in entries}) > 5
