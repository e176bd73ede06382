"""MD5 path hashing of catalog rows (reference sections 5.5 and 12.1)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from rcds.format.pathhash import NULL_PATH_HASH, join, md5_pair, parent_pair, parent_path

VECTORS = {
    "": (338333539836370388, 9098107892288553193),
    "/bin": (-735846990825684962, -3461353458792509248),
    "/software/v1": (5933606009665733622, -8320353742129006166),
    "/hello.txt": (-4683406450497660916, -4484414705795282910),
    "/sw": (748981868904704061, -2189496567014796459),
    "/sw/.cvmfscatalog": (4274631607217774542, 7983434168347012117),
    "/sw/bin": (3467622888502372740, 7355296363329529179),
}
MD5_HEX = {
    "": "d41d8cd98f00b204e9800998ecf8427e",
    "/bin": "1e80cb7e0fbfc9f5c0509a465ecdf6cf",
    "/software/v1": "f6c33f6b3a675852aaf9ceca5a2a888c",
}


@pytest.mark.parametrize(("path", "pair"), list(VECTORS.items()))
def test_md5_pair_vectors(path: str, pair: tuple[int, int]) -> None:
    assert md5_pair(path) == pair
    assert md5_pair(path.encode()) == pair


@pytest.mark.parametrize(("path", "hexd"), list(MD5_HEX.items()))
def test_md5_hex_vectors(path: str, hexd: str) -> None:
    assert hashlib.md5(path.encode()).hexdigest() == hexd
    assert struct.pack("<qq", *md5_pair(path)).hex() == hexd


def test_parents() -> None:
    assert parent_pair("") == NULL_PATH_HASH == (0, 0)
    assert parent_pair("/hello.txt") == VECTORS[""]
    assert parent_pair("/sw") == VECTORS[""]
    assert parent_pair("/sw/bin") == VECTORS["/sw"]
    assert parent_pair("/sw/.cvmfscatalog") == VECTORS["/sw"]
    assert parent_path("/a") == ""
    assert parent_path("/a/b/c") == "/a/b"
    with pytest.raises(ValueError):
        parent_path("")
    assert join("", "a") == "/a"
    assert join("/a", "b") == "/a/b"


def test_non_ascii_paths_hash_their_utf8_bytes() -> None:
    path = "/sw/grp/cidA/dönüş/ünïcödé.txt"
    assert md5_pair(path) == struct.unpack("<qq", hashlib.md5(path.encode("utf-8")).digest())
    raw = b"/sw/\xff\xfe"  # bytes that are not UTF-8 survive via surrogateescape
    assert md5_pair(raw.decode("utf-8", "surrogateescape")) == md5_pair(raw)


def test_signed_halves() -> None:
    # both halves are signed 64-bit: check ranges over many paths
    for i in range(500):
        a, b = md5_pair(f"/p{i}")
        assert -(2**63) <= a < 2**63
        assert -(2**63) <= b < 2**63
