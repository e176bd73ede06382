"""zlib object codec, object verification and streaming verification (reference sections 1.5, 1.6).

Every test runs with both inflaters: ISA-L (used when installed) and plain zlib.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcds.errors import IntegrityError
from rcds.format import compression
from rcds.format.compression import (
    StreamVerifier,
    compress,
    decompress,
    iter_decompress,
    make_object,
    verify_object,
)
from rcds.format.hashes import Algorithm, ContentHash

HELLO_OBJECT = bytes.fromhex("789ccb48cdc9c9e70200084b021f")
HELLO_SHA1 = ContentHash.parse("5798f7f4ca7585d850eea64610a1f73d8f8de7a3")
EMPTY_OBJECT = bytes.fromhex("789c030000000001")
EMPTY_SHA1 = ContentHash.parse("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78")
PAYLOAD = b"".join(f"line {i} of a compressible text\n".encode() for i in range(3000)) + os.urandom(5000)


@pytest.fixture(autouse=True, scope="module", params=["isal", "zlib"])
def inflater(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the module's tests with each inflater (module scope: hypothesis allows it)."""
    module = zlib if request.param == "zlib" else pytest.importorskip("isal.isal_zlib")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compression, "_inflater", module)
        mp.setattr(compression, "_ERRORS", (zlib.error, module.error))
        yield request.param


def test_isal_is_the_inflater_when_installed() -> None:
    pytest.importorskip("isal.isal_zlib")
    code = "import rcds.format.compression as c, isal.isal_zlib as i; assert c._inflater is i"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compress_is_zlib_with_header() -> None:
    assert compress(b"hello\n") == HELLO_OBJECT
    assert compress(b"") == EMPTY_OBJECT
    assert compress(PAYLOAD)[:2] == b"\x78\x9c"


def test_make_object_vectors() -> None:
    obj = make_object(b"hello\n")
    assert obj.data == HELLO_OBJECT
    assert obj.hash == HELLO_SHA1
    assert obj.size == 6
    empty = make_object(b"")
    assert empty.hash == EMPTY_SHA1
    assert empty.size == 0
    shake = make_object(b"hello\n", Algorithm.SHAKE128)
    assert shake.data == HELLO_OBJECT
    assert shake.hash == ContentHash.of(HELLO_OBJECT, Algorithm.SHAKE128)


def test_make_object_uncompressed_hashes_plain_bytes() -> None:
    obj = make_object(b"hello\n", compressed=False)
    assert obj.data == b"hello\n"
    assert obj.hash == ContentHash.of(b"hello\n")
    assert verify_object(obj.data, obj.hash, compressed=False, size=6) == b"hello\n"


def test_decompress_round_trip() -> None:
    assert decompress(compress(PAYLOAD)) == PAYLOAD
    assert decompress(HELLO_OBJECT) == b"hello\n"
    assert decompress(EMPTY_OBJECT) == b""
    assert decompress(compress(PAYLOAD), limit=len(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("cut", [0, 1, 2, 5, 100, -1, -4, -5])
def test_decompress_rejects_truncated(cut: int) -> None:
    data = compress(PAYLOAD)
    with pytest.raises(IntegrityError) as exc:
        decompress(data[:cut], what="the object")
    assert exc.value.what == "the object"


def test_decompress_rejects_corrupt() -> None:
    data = bytearray(compress(PAYLOAD))
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0x55
    with pytest.raises(IntegrityError):
        decompress(bytes(data))
    with pytest.raises(IntegrityError):
        decompress(b"not zlib at all")
    bad_adler = bytearray(HELLO_OBJECT)
    bad_adler[-1] ^= 1
    with pytest.raises(IntegrityError):
        decompress(bytes(bad_adler))


def test_decompress_rejects_raw_deflate_and_gzip() -> None:
    raw = zlib.compressobj(wbits=-15)
    with pytest.raises(IntegrityError):
        decompress(raw.compress(b"hello\n") + raw.flush())
    gz = zlib.compressobj(wbits=31)
    with pytest.raises(IntegrityError):
        decompress(gz.compress(b"hello\n") + gz.flush())


@pytest.mark.parametrize("tail", [b"\x00", b"x", HELLO_OBJECT])
def test_decompress_rejects_trailing_data(tail: bytes) -> None:
    with pytest.raises(IntegrityError, match="trailing"):
        decompress(HELLO_OBJECT + tail)


def test_decompress_limit() -> None:
    data = compress(PAYLOAD)
    assert decompress(data, limit=len(PAYLOAD)) == PAYLOAD
    with pytest.raises(IntegrityError, match="beyond"):
        decompress(data, limit=len(PAYLOAD) - 1)
    with pytest.raises(IntegrityError):
        decompress(data, limit=0)
    assert decompress(EMPTY_OBJECT, limit=0) == b""
    bomb = compress(bytes(50 << 20))
    with pytest.raises(IntegrityError):
        decompress(bomb, limit=1 << 20)


def test_verify_object_ok() -> None:
    assert verify_object(HELLO_OBJECT, HELLO_SHA1) == b"hello\n"
    assert verify_object(HELLO_OBJECT, HELLO_SHA1, size=6) == b"hello\n"
    assert verify_object(EMPTY_OBJECT, EMPTY_SHA1, size=0) == b""


def test_verify_object_hash_mismatch() -> None:
    other = ContentHash.of(b"something else")
    with pytest.raises(IntegrityError, match="hash mismatch") as exc:
        verify_object(HELLO_OBJECT, other, what="data/xx/obj")
    assert exc.value.what == "data/xx/obj"
    assert other.hex in str(exc.value)
    assert HELLO_SHA1.hex in str(exc.value)
    # the same digest under another algorithm is a different hash
    with pytest.raises(IntegrityError, match="hash mismatch"):
        verify_object(HELLO_OBJECT, ContentHash(Algorithm.RMD160, HELLO_SHA1.digest))
    flipped = bytearray(HELLO_OBJECT)
    flipped[3] ^= 1
    with pytest.raises(IntegrityError, match="hash mismatch"):
        verify_object(bytes(flipped), HELLO_SHA1)


def test_verify_object_size_mismatch() -> None:
    with pytest.raises(IntegrityError, match="size mismatch") as exc:
        verify_object(HELLO_OBJECT, HELLO_SHA1, size=7, what="f")
    assert exc.value.what == "f"
    with pytest.raises(IntegrityError):
        verify_object(HELLO_OBJECT, HELLO_SHA1, size=5)
    with pytest.raises(IntegrityError, match="size mismatch"):
        verify_object(b"hello\n", ContentHash.of(b"hello\n"), compressed=False, size=5)


def test_verify_object_bad_stream_with_matching_hash() -> None:
    """A stored object whose hash is right but whose zlib stream is broken is still refused."""
    for data in (HELLO_OBJECT[:-2], HELLO_OBJECT + b"\x00", b"garbage"):
        with pytest.raises(IntegrityError):
            verify_object(data, ContentHash.of(data))


@pytest.mark.parametrize("algo", list(Algorithm))
def test_verify_object_in_two_halves(algo: Algorithm) -> None:
    """check_hash + inflate_checked (what prefetch runs on two threads) is verify_object."""
    stored = make_object(b"hello\n" * 50, algo)
    assert compression.hash_matches(stored.data, stored.hash)
    compression.check_hash(stored.data, stored.hash)
    assert compression.inflate_checked(stored.data, size=stored.size) == b"hello\n" * 50
    assert not compression.hash_matches(stored.data[:-1], stored.hash)
    assert not compression.hash_matches(
        stored.data,
        ContentHash(Algorithm.SHA1 if algo is not Algorithm.SHA1 else Algorithm.RMD160, stored.hash.digest),
    )
    with pytest.raises(IntegrityError, match="hash mismatch") as exc:
        compression.check_hash(stored.data + b"x", stored.hash, "data/xx/obj")
    assert exc.value.what == "data/xx/obj"
    with pytest.raises(IntegrityError, match="size mismatch"):
        compression.inflate_checked(stored.data, size=stored.size + 1)
    with pytest.raises(IntegrityError):
        compression.inflate_checked(stored.data[:-3], size=stored.size)
    assert compression.inflate_checked(b"plain", compressed=False, size=5) == b"plain"


def _variants(rng: random.Random, payload: bytes) -> list[bytes]:
    good = compress(payload)
    flipped = bytearray(good)
    flipped[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
    return [good, good[: rng.randrange(len(good))], good + b"\x00", bytes(flipped)]


def _outcome_whole(data: bytes, h: ContentHash, size: int | None, compressed: bool) -> bytes | None:
    try:
        return verify_object(data, h, size=size, compressed=compressed)
    except IntegrityError:
        return None


def _outcome_stream(
    data: bytes, h: ContentHash, size: int | None, compressed: bool, rng: random.Random
) -> bytes | None:
    v = StreamVerifier(h, compressed=compressed)
    out = bytearray()
    pos = 0
    try:
        while pos < len(data):
            n = rng.randint(0, 50)  # zero-length pieces too
            out += v.feed(data[pos : pos + n])
            pos += n
        v.finish(size)
    except IntegrityError:
        return None
    assert v.size == len(out)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=3000), seed=st.integers(0, 2**32), algo=st.sampled_from(list(Algorithm)))
def test_stream_verifier_matches_verify_object(payload: bytes, seed: int, algo: Algorithm) -> None:
    rng = random.Random(seed)
    for data in _variants(rng, payload):
        for h in (ContentHash.of(data, algo), ContentHash.of(compress(payload), algo)):
            for size in (None, len(payload), len(payload) + 1):
                whole = _outcome_whole(data, h, size, True)
                assert _outcome_stream(data, h, size, True, rng) == whole
                if data == compress(payload) and h == ContentHash.of(data, algo) and size != len(payload) + 1:
                    assert whole == payload


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=2000), seed=st.integers(0, 2**32))
def test_stream_verifier_uncompressed(payload: bytes, seed: int) -> None:
    rng = random.Random(seed)
    h = ContentHash.of(payload)
    for size in (None, len(payload), len(payload) + 1):
        assert _outcome_stream(payload, h, size, False, rng) == _outcome_whole(payload, h, size, False)
    assert _outcome_stream(payload, h, None, False, rng) == payload


def test_stream_verifier_large_random_pieces() -> None:
    rng = random.Random(7)
    data = compress(PAYLOAD)
    h = ContentHash.of(data, Algorithm.SHAKE128)
    for _ in range(5):
        assert _outcome_stream(data, h, len(PAYLOAD), True, rng) == PAYLOAD
        assert (
            _outcome_stream(data[:-1], ContentHash.of(data[:-1], Algorithm.SHAKE128), None, True, rng) is None
        )


def test_stream_verifier_messages() -> None:
    v = StreamVerifier(HELLO_SHA1, what="data/57/x")
    v.feed(HELLO_OBJECT[:5])
    with pytest.raises(IntegrityError, match="hash mismatch") as exc:
        v.finish()
    assert exc.value.what == "data/57/x"
    padded = HELLO_OBJECT + b"pad"
    v = StreamVerifier(ContentHash.of(padded))
    v.feed(padded)
    with pytest.raises(IntegrityError, match="truncated or padded"):
        v.finish()
    v = StreamVerifier(HELLO_SHA1)
    v.feed(HELLO_OBJECT)
    with pytest.raises(IntegrityError, match="size mismatch"):
        v.finish(size=99)


def test_iter_decompress() -> None:
    data = compress(PAYLOAD)
    h = ContentHash.of(data)
    pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
    assert b"".join(iter_decompress(pieces, h)) == PAYLOAD
    with pytest.raises(IntegrityError):
        b"".join(iter_decompress(pieces[:-1], h))
