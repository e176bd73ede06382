"""The deflate libraries of a repository: every choice writes zlib streams that any inflater reads."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from rcds.errors import ConfigError
from rcds.format import compression
from rcds.format.compression import decompress, make_object, verify_object
from rcds.format.deflaters import DEFAULT, LIBRARIES, Compression, resolve

CONTENTS = [
    b"",
    b"x",
    b"def f(x):\n    return x * 2\n" * 3000,
    os.urandom(70_000),  # incompressible: stored blocks
    bytes(300_000),
]
EVERY_SETTING = [Compression(name, level) for name, lib in LIBRARIES.items() for level in lib.levels]


@pytest.mark.parametrize("setting", EVERY_SETTING, ids=str)
def test_every_setting_round_trips_through_stock_zlib_and_our_verifier(setting: Compression) -> None:
    compress = setting.compressor()
    for content in CONTENTS:
        obj = make_object(content, compressor=compress)
        assert isinstance(obj.data, bytes)
        assert obj.data[0] == 0x78 and int.from_bytes(obj.data[:2], "big") % 31 == 0  # a zlib header
        assert zlib.decompress(obj.data) == content  # what a stock client does
        assert decompress(obj.data) == content
        assert verify_object(obj.data, obj.hash, size=len(content)) == content
        # whole-buffer compression of a memoryview slice gives the same bytes
        assert compress(memoryview(b"__" + content)[2:]) == obj.data


def test_libraries_differ_in_bytes_so_in_names() -> None:
    text = CONTENTS[2]
    names = {make_object(text, compressor=c.compressor()).hash for c in map(Compression.parse, _SOME)}
    assert len(names) == len(_SOME)


_SOME = ["zlib:6", "zlib:1", "libdeflate:5", "libdeflate:6", "isal:2"]


@pytest.mark.parametrize("setting", ["zlib:6", "libdeflate:1", "libdeflate:12", "isal:0", "isal:3"])
def test_the_empty_content_is_the_stock_empty_object(setting: str) -> None:
    obj = make_object(b"", compressor=Compression.parse(setting).compressor())
    assert obj.hash.hex == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"  # as stock cvmfs_server stores it


def test_the_zlib_setting_is_the_standard_library_byte_for_byte() -> None:
    for level in range(1, 10):
        assert Compression("zlib", level).compressor()(CONTENTS[2]) == zlib.compress(CONTENTS[2], level)


def test_default_is_libdeflate_and_about_the_size_of_zlib_6() -> None:
    assert str(DEFAULT) == "libdeflate:5"
    # real Python source files, each one object (a few may come out some bytes larger, the whole not)
    sources = [p.read_bytes() for p in sorted(Path(compression.__file__).parents[1].rglob("*.py"))]
    assert len(sources) > 100
    ours = sum(len(DEFAULT.compressor()(text)) for text in sources)
    assert ours <= 1.01 * sum(len(zlib.compress(text, 6)) for text in sources)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("libdeflate:6", ("libdeflate", 6)), (" ISAL:0 ", ("isal", 0)), ("zlib:9", ("zlib", 9))],
)
def test_parse(text: str, expected: tuple[str, int]) -> None:
    c = Compression.parse(text)
    assert (c.library, c.level) == expected
    assert Compression.parse(str(c)) == c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("libdeflate", "give LIBRARY:LEVEL"),
        ("brotli:5", "give LIBRARY:LEVEL, one of zlib:1-9, libdeflate:1-12, isal:0-3"),
        ("zlib-ng:6", "give LIBRARY:LEVEL"),
        ("zlib:x", "the level must be a number"),
        ("zlib:0", "zlib levels are 1-9"),
        ("isal:4", "isal levels are 0-3"),
        ("libdeflate:13", "libdeflate levels are 1-12"),
    ],
)
def test_bad_settings_are_refused_with_the_choices(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Compression.parse(text)


def test_resolve_uses_the_library_when_it_imports() -> None:
    r = resolve(Compression("isal", 2))
    assert r.compression == Compression("isal", 2) and r.note is None


def test_a_library_that_cannot_be_imported_falls_back_to_zlib_with_a_clear_note(tmp_path: Path) -> None:
    """A real import failure: a module of that name that raises ImportError comes first on the path."""
    (tmp_path / "deflate.py").write_text("raise ImportError('no libdeflate on this platform')\n")
    code = (
        "from rcds.format.deflaters import Compression, resolve\n"
        "r = resolve(Compression('libdeflate', 12))\n"
        "assert r.compression == Compression('zlib', 9), r\n"
        "import zlib; assert r.compress(b'abc' * 100) == zlib.compress(b'abc' * 100, 9)\n"
        "print(r.note)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "compression libdeflate:12 needs the Python package 'deflate'" in out.stdout
    assert "no libdeflate on this platform" in out.stdout
    assert "written with zlib:9 instead" in out.stdout and "pip install deflate" in out.stdout
