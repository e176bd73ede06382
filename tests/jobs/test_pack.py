"""Reproducible directory tarballs: rcds.jobs.pack."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from rcds.errors import ConfigError, InputError
from rcds.jobs.pack import FIXED_MTIME, PackResult, _header, cid_for, hash_file, pack_directory


def pack(src: Path, **kw: object) -> tuple[bytes, PackResult]:
    buf = io.BytesIO()
    result = pack_directory(src, buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue(), result


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


def make_tree(root: Path, order: int = 1) -> Path:
    """A small tree; ``order`` reverses the creation order of entries."""
    files = {
        "README.md": b"hello\n",
        "bin/run.sh": b"#!/bin/sh\necho run\n",
        "lib/a.py": b"A = 1\n",
        "lib/b.py": b"B = 2\n",
        "lib/sub/c.txt": b"c" * 1000,
        "données/été.txt": "ça va\n".encode(),
    }
    items = list(files.items())[::order]
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in items:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    (root / "bin/run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "lib/current").symlink_to("sub/c.txt")
    (root / "abs").symlink_to("/cvmfs/example.org/etc")
    return root


def test_same_tree_twice_identical(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    a, ra = pack(src)
    b, rb = pack(src)
    assert a == b
    assert ra == rb
    assert ra.sha256 == hashlib.sha256(a).hexdigest()
    assert ra.size == len(a)
    assert ra.tar_sha256 == hashlib.sha256(gzip.decompress(a)).hexdigest()
    assert ra.tar_size == len(gzip.decompress(a)) and ra.tar_size % 10240 == 0


def test_copy_with_other_metadata_identical(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    old = os.umask(0o077)
    try:
        dst = make_tree(tmp_path / "elsewhere" / "copy", order=-1)
    finally:
        os.umask(old)
    for i, p in enumerate(sorted(dst.rglob("*"))):
        if os.geteuid() == 0:
            os.lchown(p, 1234 + i, 4321)
        if not p.is_symlink():
            os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    os.utime(dst, (5, 5))
    assert (dst / "README.md").stat().st_mode & 0o777 == 0o600
    assert pack(src)[0] == pack(dst)[0]


def test_creation_order_does_not_matter(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    letters = [f"f{i:03d}-{c}" for i, c in enumerate("qwertyuiopasdfghjklzxcvbnm")]
    for n in letters:
        (a / n).write_text(n)
    for n in reversed(letters):
        (b / n).write_text(n)
    data_a, _ = pack(a)
    assert data_a == pack(b)[0]
    assert names(data_a) == sorted(letters)


def test_adding_a_file_changes_the_hash(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    before = pack(src)[1]
    (src / "lib/new.py").write_text("")
    after = pack(src)[1]
    assert before.sha256 != after.sha256
    assert after.members == before.members + 1


def test_byte_order_and_members(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "lib-x").write_text("x")
    data, result = pack(src)
    got = names(data)
    assert got == sorted(got, key=lambda n: n.encode())
    assert got.index("lib") < got.index("lib-x") < got.index("lib/a.py")
    assert result.members == len(got)
    assert "empty" in got and "." not in got and "" not in got


def test_normalized_metadata_and_extraction(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "secret").write_text("s")
    (src / "secret").chmod(0o600)
    (src / "suid").write_text("s")
    (src / "suid").chmod(0o4750)
    data, _ = pack(src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        for m in members.values():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (FIXED_MTIME, 0, 0, "", "")
        assert members["secret"].mode == 0o644
        assert members["suid"].mode == 0o755
        assert members["bin/run.sh"].mode == 0o755
        assert members["README.md"].mode == 0o644
        assert members["empty"].isdir() and members["empty"].mode == 0o755
        assert members["lib/current"].issym() and members["lib/current"].linkname == "sub/c.txt"
        assert members["abs"].linkname == "/cvmfs/example.org/etc"
        out = tmp_path / "out"
        tf.extractall(out, filter="tar")
    assert (out / "données/été.txt").read_text() == "ça va\n"
    assert (out / "lib/current").read_bytes() == b"c" * 1000
    assert (out / "empty").is_dir() and not list((out / "empty").iterdir())
    assert (out / "README.md").stat().st_mtime == FIXED_MTIME


def test_gzip_header_is_fixed(tmp_path: Path) -> None:
    data, _ = pack(make_tree(tmp_path / "src"))
    assert data[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME/FCOMMENT/FEXTRA
    assert data[4:8] == b"\0\0\0\0"  # mtime 0
    assert data[9] == 0xFF


def test_pinned_tar_stream(tmp_path: Path) -> None:
    """The uncompressed profile is frozen: a change here changes every CID."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f.txt").write_bytes(b"rcds\n")
    (src / "x").write_bytes(b"")
    (src / "x").chmod(0o775)
    (src / "l").symlink_to("d/f.txt")
    result = pack(src)[1]
    assert (result.tar_sha256, result.members) == (PINNED_TAR_SHA256, 4)
    if "ng" not in zlib.ZLIB_RUNTIME_VERSION:  # zlib-ng deflates differently
        assert (result.sha256, result.size) == (PINNED_GZ_SHA256, 172)


PINNED_TAR_SHA256 = "54dec1cbefa52aa85f6126287d84f28aae9ebbf5da24d68452ee8f1c684ef022"
PINNED_GZ_SHA256 = "4dc52559a1286f04cb74c60ba6dad6abbe03a9971ee63d9ae0b5d0eaabade20d"


def test_same_bytes_as_tarfile_pax(tmp_path: Path) -> None:
    """The tar stream equals what tarfile writes in PAX_FORMAT for the normalized fields."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f.txt").write_bytes(b"rcds\n")
    os.link(src / "d/f.txt", src / "h")
    (src / "x").write_bytes(b"")
    (src / "x").chmod(0o775)
    (src / "l").symlink_to("d/f.txt")
    (src / ("é" * 60)).write_bytes(b"u")
    (src / ("n" * 130)).symlink_to("t" * 101 + "é")
    mine = gzip.decompress(pack(src)[0])

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, mode, data, link in [
            ("d", tarfile.DIRTYPE, 0o755, b"", ""),
            ("d/f.txt", tarfile.REGTYPE, 0o644, b"rcds\n", ""),
            ("h", tarfile.LNKTYPE, 0o644, b"", "d/f.txt"),
            ("l", tarfile.SYMTYPE, 0o777, b"", "d/f.txt"),
            ("n" * 130, tarfile.SYMTYPE, 0o777, b"", "t" * 101 + "é"),
            ("x", tarfile.REGTYPE, 0o755, b"", ""),
            ("é" * 60, tarfile.REGTYPE, 0o644, b"u", ""),
        ]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size, ti.linkname = kind, mode, FIXED_MTIME, len(data), link
            ti.uname = ti.gname = ""
            tf.addfile(ti, io.BytesIO(data))
    assert mine == out.getvalue()


def test_huge_size_goes_to_pax() -> None:
    size = 9 * 2**30
    ti = tarfile.TarInfo("big.bin")
    ti.mode, ti.mtime, ti.size, ti.uname, ti.gname = 0o644, FIXED_MTIME, size, "", ""
    expected = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert _header("big.bin", b"0", 0o644, size) == expected
    assert b" size=9663676416\n" in expected


def test_non_ascii_and_long_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    long_dir = "d" * 150
    (src / long_dir).mkdir(parents=True)
    (src / long_dir / ("ü" * 120)).write_text("long")
    (src / "日本語.txt").write_text("jp")
    (src / "ln").symlink_to("t" * 200)
    data, _ = pack(src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: m for m in tf.getmembers()}
    assert f"{long_dir}/{'ü' * 120}" in got
    assert "日本語.txt" in got
    assert got["ln"].linkname == "t" * 200


def test_symlinks_kept_and_escape_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/up").symlink_to("../../a")  # resolves to "a": inside
    (src / "dangling").symlink_to("nowhere")
    (src / "dirlink").symlink_to("a")
    data, _ = pack(src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: m for m in tf.getmembers()}
    assert got["a/b/up"].issym() and got["dangling"].issym() and got["dirlink"].issym()
    assert "dirlink/b" not in got  # links to directories are not followed
    (src / "a/out").symlink_to("../../etc")
    with pytest.raises(InputError, match="outside") as exc:
        pack(src)
    assert exc.value.member == "a/out"


def test_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x/b").write_text("shared")
    os.link(src / "x/b", src / "a")
    os.link(src / "x/b", src / "z")
    (tmp_path / "outside").write_text("o")
    os.link(tmp_path / "outside", src / "only")
    data, _ = pack(src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: m for m in tf.getmembers()}
        assert got["a"].isfile() and got["a"].size == 6
        assert got["x/b"].islnk() and got["x/b"].linkname == "a"
        assert got["z"].islnk() and got["z"].linkname == "a"
        assert got["only"].isfile()
        out = tmp_path / "out"
        tf.extractall(out, filter="tar")
    assert (out / "x/b").stat().st_ino == (out / "a").stat().st_ino
    # excluding the first link promotes the next one to the file
    data2, _ = pack(src, exclude=["a"])
    with tarfile.open(fileobj=io.BytesIO(data2)) as tf:
        got = {m.name: m for m in tf.getmembers()}
    assert got["x/b"].isfile() and got["z"].linkname == "x/b"


def test_exclude_patterns(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / ".git/objects").mkdir(parents=True)
    (src / ".git/config").write_text("c")
    (src / "lib/debug.log").write_text("l")
    (src / "build/tmp").mkdir(parents=True)
    (src / "build/tmp/x").write_text("x")
    (src / "build/keep").write_text("k")
    (src / "lib/sub/build").write_text("a file called build")
    got = names(pack(src, exclude=["*.log", ".git", "/build/tmp", "build/"])[0])
    assert not any(n.startswith(".git") or n.endswith(".log") or n.startswith("build") for n in got)
    assert "lib/sub/build" in got  # "build/" only excludes directories
    got = names(pack(src, exclude=["build/tmp"])[0])
    assert "build/keep" in got and "build/tmp" not in got and "build/tmp/x" not in got
    with pytest.raises(ConfigError):
        pack(src, exclude=["/"])


def test_output_inside_source_is_skipped(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    expected = pack(src)[0]
    target = src / "out.tgz"
    with open(target, "wb") as f:
        pack_directory(src, f)
    assert target.read_bytes() == expected


def test_fifo_and_socket_rejected(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "lib/pipe")
    with pytest.raises(InputError, match="lib/pipe") as exc:
        pack(src)
    assert exc.value.member == "lib/pipe"
    assert pack(src, exclude=["pipe"])[1].members > 0
    os.unlink(src / "lib/pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "s"))
        with pytest.raises(InputError, match="special"):
            pack(src)
    finally:
        sock.close()


def test_non_utf8_name_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    try:
        (src / os.fsdecode(b"bad\xff")).write_text("x")
    except (OSError, UnicodeError):
        pytest.skip("filesystem refuses non-UTF-8 names")
    with pytest.raises(InputError, match="UTF-8"):
        pack(src)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        pack(tmp_path / "missing")
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError):
        pack(tmp_path / "f")


def test_progress_reports_compressed_bytes(tmp_path: Path) -> None:
    seen: list[int] = []
    data, result = pack(make_tree(tmp_path / "src"), progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == result.size == len(data)


def test_large_file_streams_in_constant_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 50 * 2**20
    chunk = os.urandom(64 * 1024)
    with open(src / "big.bin", "wb") as f:
        f.truncate(size)
        for off in range(0, size, 5 * 2**20):
            f.seek(off)
            f.write(chunk)
    out = tmp_path / "big.tgz"
    tracemalloc.start()
    try:
        with open(out, "wb") as f:
            result = pack_directory(src, f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak
    assert hash_file(out) == result.sha256
    h = hashlib.sha256()
    with tarfile.open(out) as tf:
        member = tf.getmember("big.bin")
        assert member.size == size
        reader = tf.extractfile(member)
        assert reader is not None
        while block := reader.read(2**20):
            h.update(block)
    with open(src / "big.bin", "rb") as f:
        assert h.hexdigest() == hashlib.file_digest(f, "sha256").hexdigest()


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar binary")
def test_gnu_tar_reads_it_cleanly(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / ("n" * 130)).write_text("long")
    out = tmp_path / "t.tgz"
    with open(out, "wb") as f:
        pack_directory(src, f)
    proc = subprocess.run(["tar", "-tzf", str(out)], capture_output=True, check=True)
    assert proc.stderr == b""
    assert ("n" * 130).encode() in proc.stdout.splitlines()


def test_cid_for_and_hash_file(tmp_path: Path) -> None:
    digest = "ab" * 32
    assert cid_for("dune", digest) == f"dune/{digest}"
    for bad_group in ("", "a/b", ".x", "x'y", "g" * 65):
        with pytest.raises(InputError):
            cid_for(bad_group, digest)
    for bad_digest in ("AB" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(InputError):
            cid_for("dune", bad_digest)
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert hash_file(f) == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(InputError):
        hash_file(tmp_path / "missing")
