"""``rcds repo create --compression`` and ``rcds repo config``: every library writes objects that
stock zlib inflates and ``rcds repo verify`` accepts; changes, old settings files and a missing
library. Real processes on real repositories."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from testkit import rcds

NAME = "compress.example.org"
TEXT = b"def f(x):\n    return x * 2  # a line deflate can squeeze\n" * 400


def src_tree(tmp_path: Path, text: bytes = TEXT) -> Path:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True, exist_ok=True)
    (src / "pkg" / "m.py").write_bytes(text)
    (src / "pkg" / "empty.py").write_bytes(b"")
    (src / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 300)
    return src


def file_objects(root: Path) -> dict[str, bytes]:
    """File objects (no suffix: 38 hex digits after data/xx/) by name."""
    return {
        p.name: p.read_bytes()
        for p in (root / "public" / "data").rglob("*")
        if p.is_file() and len(p.name) == 38
    }


def catalogs(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in (root / "public" / "data").rglob("*C") if p.is_file()]


@pytest.mark.parametrize(
    ("args", "recorded"),
    [
        ([], "libdeflate:5"),
        (["--compression", "libdeflate:6"], "libdeflate:6"),
        (["--compression", "zlib:6"], "zlib:6"),
        (["--compression", "isal:2"], "isal:2"),
        (["--compression", "libdeflate:12"], "libdeflate:12"),
        (["--level", "1"], "zlib:1"),
    ],
)
def test_create_records_the_compression_and_every_object_is_a_stock_zlib_stream(
    tmp_path: Path, args: list[str], recorded: str
) -> None:
    root = tmp_path / "r"
    rcds("repo", "create", NAME, "--root", str(root), *args)
    assert json.loads((root / "repo.json").read_text())["compression"] == recorded
    rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src_tree(tmp_path)), "--path", "/sw/x")
    objects = file_objects(root)
    plain = {zlib.decompress(data) for data in objects.values()}
    assert {TEXT, b"", bytes(range(256)) * 300} <= plain
    for cat in catalogs(root):
        assert zlib.decompress(cat)[:16] == b"SQLite format 3\x00"
    out = rcds("repo", "verify", NAME, "--root", str(root))
    assert "revision 1 is intact" in out.stdout
    assert "compression:" in rcds("repo", "config", NAME, "--root", str(root)).stdout


def test_the_libraries_store_different_bytes(tmp_path: Path) -> None:
    src = src_tree(tmp_path)
    sizes = {}
    for setting in ("zlib:1", "zlib:9", "isal:2", "libdeflate:6"):
        root = tmp_path / setting.replace(":", "-")
        rcds("repo", "create", NAME, "--root", str(root), "--compression", setting)
        rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src), "--path", "/sw/x")
        (obj,) = [d for d in file_objects(root).values() if zlib.decompress(d) == TEXT]
        sizes[setting] = obj
    assert len(set(sizes.values())) == 4  # four compressors, four different objects of one content
    assert len(sizes["zlib:9"]) < len(sizes["zlib:1"])


def test_changing_the_compression_keeps_old_objects_valid(tmp_path: Path) -> None:
    root = tmp_path / "r"
    src = src_tree(tmp_path)
    rcds("repo", "create", NAME, "--root", str(root), "--compression", "zlib:6")
    rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src), "--path", "/sw/old")
    before = file_objects(root)
    out = rcds("repo", "config", NAME, "--root", str(root), "--compression", "isal:1")
    assert "written with isal:1 (was zlib:6)" in out.stdout and "compression:" in out.stdout
    assert json.loads((root / "repo.json").read_text())["compression"] == "isal:1"
    out = rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src), "--path", "/sw/new")
    after = file_objects(root)
    assert before.items() <= after.items()  # nothing rewritten
    new = {n: d for n, d in after.items() if n not in before}
    assert TEXT in {zlib.decompress(d) for d in new.values()}  # the same content, stored anew
    assert "revision 2 is intact" in rcds("repo", "verify", NAME, "--root", str(root)).stdout
    # a bad value changes nothing
    bad = rcds("repo", "config", NAME, "--root", str(root), "--compression", "isal:9", check=False)
    assert bad.returncode == 2 and "isal levels are 0-3" in bad.stderr
    assert json.loads((root / "repo.json").read_text())["compression"] == "isal:1"


def test_a_settings_file_of_an_older_rcds_means_zlib_at_its_level(tmp_path: Path) -> None:
    root = tmp_path / "r"
    rcds("repo", "create", NAME, "--root", str(root))
    settings = json.loads((root / "repo.json").read_text())
    del settings["compression"]
    settings["compression_level"] = 3
    (root / "repo.json").write_text(json.dumps(settings))
    assert "zlib:3" in rcds("repo", "config", NAME, "--root", str(root)).stdout
    rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src_tree(tmp_path)), "--path", "/sw/x")
    assert zlib.compress(TEXT, 3) in file_objects(root).values()


def test_bad_compression_on_create_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for args, message in (
        (["--compression", "gzip:6"], "give LIBRARY:LEVEL, one of zlib:1-9, libdeflate:1-12, isal:0-3"),
        (["--compression", "zlib:6", "--level", "6"], "not both"),
        (["--level", "0"], "zlib levels are 1-9"),
    ):
        out = rcds("repo", "create", NAME, "--root", str(root), *args, check=False)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert not root.exists()


def test_a_missing_library_falls_back_to_zlib_with_a_warning(tmp_path: Path) -> None:
    """The ``deflate`` module really cannot be imported: one that raises comes first on the path."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "deflate.py").write_text("raise ImportError('libdeflate is not built for this platform')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    root = tmp_path / "r"
    out = rcds("repo", "create", NAME, "--root", str(root), env=env)
    assert "compression libdeflate:5 needs the Python package 'deflate'" in out.stderr
    assert json.loads((root / "repo.json").read_text())["compression"] == "libdeflate:5"  # the wish stays
    out = rcds(
        "repo",
        "ingest",
        NAME,
        "--root",
        str(root),
        "--dir",
        str(src_tree(tmp_path)),
        "--path",
        "/sw/x",
        env=env,
    )
    assert "warning" in out.stderr.lower() and "written with zlib:5 instead" in out.stderr
    assert "pip install deflate" in out.stderr
    assert zlib.compress(TEXT, 5) in file_objects(root).values()
    assert "(in use: zlib:5)" in rcds("repo", "config", NAME, "--root", str(root), env=env).stdout
    rcds("repo", "verify", NAME, "--root", str(root), env=env)
    # with the library back, the same repository writes libdeflate objects again
    rcds(
        "repo",
        "ingest",
        NAME,
        "--root",
        str(root),
        "--dir",
        str(src_tree(tmp_path, TEXT * 2)),
        "--path",
        "/sw/y",
    )
    import deflate

    assert bytes(deflate.zlib_compress(TEXT * 2, 5)) in file_objects(root).values()
