"""``verify_sized``: libdeflate's whole-buffer inflate with the same checks as ``verify_object``."""

from __future__ import annotations

import os
import zlib

import pytest

from rcds.errors import IntegrityError
from rcds.format import wholeinflate
from rcds.format.compression import make_object, verify_object
from rcds.format.hashes import ContentHash
from rcds.format.wholeinflate import verify_sized

CONTENTS = [b"x", b"hello\n" * 1000, os.urandom(70_000), bytes(3 << 20) + os.urandom(5000)]


def test_libdeflate_is_there() -> None:
    assert wholeinflate._libdeflate is not None  # a dependency: the fast path is what runs


@pytest.mark.parametrize("plain", CONTENTS)
def test_the_content_is_what_verify_object_gives(plain: bytes) -> None:
    obj = make_object(plain)
    got = verify_sized(obj.data, obj.hash, len(plain))
    assert got == plain == verify_object(obj.data, obj.hash, size=len(plain))
    stored = make_object(plain, compressed=False)
    assert verify_sized(stored.data, stored.hash, len(plain), compressed=False) == plain


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda z: z[:-3], "truncated|not a valid"),
        (lambda z: z[:-1] + bytes([z[-1] ^ 1]), "not a valid|incorrect"),
        (lambda z: z + b"\0\0", "trailing"),
        (lambda z: z + b"more bytes", "trailing"),
    ],
)
def test_a_bad_stream_with_a_good_hash_is_refused_as_verify_object_refuses_it(damage, message) -> None:  # type: ignore[no-untyped-def]
    plain = b"some content\n" * 500
    bad = damage(zlib.compress(plain, 6))
    h = ContentHash.of(bad)  # the hash is right: only the stream is wrong
    with pytest.raises(IntegrityError, match=message):
        verify_sized(bad, h, len(plain))
    with pytest.raises(IntegrityError):
        verify_object(bad, h, size=len(plain))


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_a_wrong_size_is_refused(delta: int) -> None:
    plain = b"abc" * 4000
    obj = make_object(plain)
    with pytest.raises(IntegrityError, match=r"size|beyond|truncated"):
        verify_sized(obj.data, obj.hash, len(plain) + delta)


def test_a_wrong_hash_is_refused() -> None:
    obj = make_object(b"content")
    other = make_object(b"other")
    with pytest.raises(IntegrityError, match="hash mismatch"):
        verify_sized(obj.data, other.hash, 7)


def test_bytes_after_the_stream_ending_like_its_trailer_are_not_seen() -> None:
    """The documented limit: libdeflate does not say where the stream ended, so bytes after it
    that end with a copy of its Adler-32 trailer pass; the content is still exactly the stream's
    (and the stored bytes are authentic: their hash was checked)."""
    plain = b"some content\n" * 500
    z = zlib.compress(plain, 6)
    odd = z + z[-4:]
    assert verify_sized(odd, ContentHash.of(odd), len(plain)) == plain
