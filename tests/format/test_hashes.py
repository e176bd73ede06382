"""Content hashes, hash strings and object names against the format reference (sections 1.2-1.7, 12.1)."""

from __future__ import annotations

import zlib

import pytest

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind, parse_object_name

# Reference section 1.7.
VECTORS = {
    (Algorithm.SHA1, b""): "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    (Algorithm.SHA1, b"abc"): "a9993e364706816aba3e25717850c26c9cd0d89d",
    (Algorithm.RMD160, b""): "9c1185a5c5e9fc54612808977ee8f548b2258d31-rmd160",
    (Algorithm.RMD160, b"abc"): "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc-rmd160",
    (Algorithm.SHAKE128, b""): "7f9c2ba4e88f827d616045507605853ed73b8093-shake128",
    (Algorithm.SHAKE128, b"abc"): "5881092dd818bf5cf8a3ddb793fbcba74097d5c5-shake128",
}

EMPTY_OBJECT = bytes.fromhex("789c030000000001")
EMPTY_OBJECT_SHA1 = "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
HELLO_OBJECT = bytes.fromhex("789ccb48cdc9c9e70200084b021f")
HELLO_OBJECT_SHA1 = "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"


@pytest.mark.parametrize(("key", "expected"), list(VECTORS.items()), ids=lambda v: str(v))
def test_hash_string_vectors(key: tuple[Algorithm, bytes], expected: str) -> None:
    algo, data = key
    h = ContentHash.of(data, algo)
    assert h.hex == expected
    assert str(h) == expected
    assert len(h.digest) == 20
    assert h.algorithm is algo


@pytest.mark.parametrize(("key", "expected"), list(VECTORS.items()), ids=lambda v: str(v))
def test_incremental_equals_whole(key: tuple[Algorithm, bytes], expected: str) -> None:
    algo, data = key
    state = algo.new()
    for i in range(len(data)):
        state.update(data[i : i + 1])
    assert state.finish().hex == expected


def test_empty_file_object() -> None:
    assert zlib.compress(b"") == EMPTY_OBJECT
    assert ContentHash.of(EMPTY_OBJECT).hex == EMPTY_OBJECT_SHA1


def test_hello_object() -> None:
    assert zlib.compress(b"hello\n") == HELLO_OBJECT
    assert ContentHash.of(HELLO_OBJECT).hex == HELLO_OBJECT_SHA1


def test_object_names_sha1() -> None:
    h = ContentHash.parse(EMPTY_OBJECT_SHA1)
    assert h.object_name() == "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    assert h.object_name(ObjectKind.FILE) == "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    assert h.object_name(ObjectKind.CATALOG) == "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78C"
    assert (
        ContentHash.parse(HELLO_OBJECT_SHA1).object_name() == "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3"
    )


@pytest.mark.parametrize("algo", list(Algorithm))
@pytest.mark.parametrize("kind", list(ObjectKind))
def test_object_name_every_algorithm_and_suffix(algo: Algorithm, kind: ObjectKind) -> None:
    h = ContentHash(algo, bytes(range(0x12, 0x12 + 20)))
    hexd = h.digest.hex()
    name = h.object_name(kind)
    assert name == f"data/{hexd[:2]}/{hexd[2:]}{algo.identifier}{kind.value}"
    assert parse_object_name(name) == (h, kind)


def test_object_name_examples() -> None:
    rmd = ContentHash.parse("12" + "34" * 19 + "-rmd160")
    assert rmd.object_name(ObjectKind.CATALOG) == "data/12/" + "34" * 19 + "-rmd160C"
    shake = ContentHash.parse("ab" + "cd" * 19 + "-shake128")
    assert shake.object_name(ObjectKind.PARTIAL) == "data/ab/" + "cd" * 19 + "-shake128P"
    assert parse_object_name("data/ab/" + "cd" * 19 + "-shake128P") == (shake, ObjectKind.PARTIAL)
    assert parse_object_name("data/12/" + "34" * 19 + "-rmd160C") == (rmd, ObjectKind.CATALOG)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b7",  # 37 hex
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b789",  # 39 hex
        "data/E8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",  # uppercase dir
        "data/e8/EC3D88B62EBF526E4E5A4FF6162A3AA48A6B78",  # uppercase hex
        "data/zz/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78Q",  # unknown suffix
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78L",  # reserved, never stored
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78T",  # temporary, never stored
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78CC",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78-md5",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78-shake128-rmd160",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78C-rmd160",  # suffix before algorithm id
        "/data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        "data/e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        "data/e8/../ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        "data/txn/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78\n",
        "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
        ".cvmfspublished",
    ],
)
def test_parse_object_name_rejects_junk(junk: str) -> None:
    with pytest.raises(IntegrityError):
        parse_object_name(junk)


@pytest.mark.parametrize("text", sorted(VECTORS.values()))
def test_hash_string_round_trip(text: str) -> None:
    h = ContentHash.parse(text)
    assert h.hex == text
    assert ContentHash.parse(h.hex) == h


def test_hash_string_algorithm_by_length() -> None:
    base = "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert ContentHash.parse(base).algorithm is Algorithm.SHA1
    assert ContentHash.parse(base + "-rmd160").algorithm is Algorithm.RMD160
    assert ContentHash.parse(base + "-shake128").algorithm is Algorithm.SHAKE128
    assert len(base + "-rmd160") == 47
    assert len(base + "-shake128") == 49
    # same digest, different algorithm: different hashes
    assert ContentHash.parse(base) != ContentHash.parse(base + "-rmd160")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "A9993E364706816ABA3E25717850C26C9CD0D89D",  # uppercase rejected
        "a9993e364706816aba3e25717850c26c9cd0d89D",
        "a9993e364706816aba3e25717850c26c9cd0d89d-RMD160",
        "a9993e364706816aba3e25717850c26c9cd0d89d-SHAKE128",
        "a9993e364706816aba3e25717850c26c9cd0d89",  # 39
        "a9993e364706816aba3e25717850c26c9cd0d89d0",  # 41
        "d41d8cd98f00b204e9800998ecf8427e",  # MD5 length: never a content hash
        "a9993e364706816aba3e25717850c26c9cd0d89d-shake12",  # 48
        "a9993e364706816aba3e25717850c26c9cd0d89d-xxxxxx",  # 47 but wrong id
        "a9993e364706816aba3e25717850c26c9cd0d89d-xxxxxxxx",  # 49 but wrong id
        "g9993e364706816aba3e25717850c26c9cd0d89d",
        " 9993e364706816aba3e25717850c26c9cd0d89d",
        "a9993e364706816aba3e25717850c26c9cd0d89dC",  # object suffix is not part of a hash string
    ],
)
def test_hash_string_rejects(bad: str) -> None:
    with pytest.raises(IntegrityError):
        ContentHash.parse(bad)


def test_digest_length_enforced() -> None:
    with pytest.raises(IntegrityError):
        ContentHash(Algorithm.SHA1, b"\x00" * 19)
    with pytest.raises(IntegrityError):
        ContentHash(Algorithm.SHA1, b"\x00" * 16)


def test_null_hash() -> None:
    assert ContentHash.parse("0" * 40).is_null()
    assert not ContentHash.parse(EMPTY_OBJECT_SHA1).is_null()


@pytest.mark.parametrize(
    ("algo", "flag", "name", "ident"),
    [
        (Algorithm.SHA1, 0, "sha1", ""),
        (Algorithm.RMD160, 1, "rmd160", "-rmd160"),
        (Algorithm.SHAKE128, 2, "shake128", "-shake128"),
    ],
)
def test_algorithm_names_and_flags(algo: Algorithm, flag: int, name: str, ident: str) -> None:
    assert algo.flag_value == flag
    assert Algorithm.from_flag_value(flag) is algo
    assert Algorithm.from_name(name) is algo
    assert Algorithm.from_name(name.upper()) is algo
    assert algo.identifier == ident


def test_algorithm_rejects_unknown() -> None:
    with pytest.raises(IntegrityError):
        Algorithm.from_name("md5")
    with pytest.raises(IntegrityError):
        Algorithm.from_flag_value(3)
