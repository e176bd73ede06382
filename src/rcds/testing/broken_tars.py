"""Broken archives and broken compression for the hostile corpus (see :mod:`rcds.testing.hostile_tars`).

Truncations, bad checksums, lying size fields, non-archives, corrupt gzip/bzip2/xz/zstd
streams and a decompression bomb. Every case here is ``reject``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Final

from rcds.testing.tarbuild import (
    Compression,
    HostileCase,
    compress,
    corrupt,
    end_of_archive,
    gzip_zero_bomb,
    header_only,
    pad,
    raw_file,
    raw_header,
    tar,
)
from rcds.testing.tarbuild import member as m

BOMB_PART: Final = 128 << 20
BOMB_PARTS: Final = 16
BOMB_MAX_BYTES: Final = 256 << 20
"""Recommended decompressed-size limit for the bomb (it inflates to 2 GiB, no file over 128 MiB)."""

_HELLO: Final = b"hello\n"
_PAX_BODY: Final = b"9999 path=victim.txt\n"
_WORDS: Final = ["alpha", "beta", "gamma", "delta", "muon", "pion", "kaon", "neutrino", "trigger", "run"]
_CORRUPTIBLE: Final[tuple[Compression, ...]] = ("gzip", "bzip2", "xz", "zstd")


@functools.cache
def payload() -> bytes:
    """A valid, fairly compressible ~100 KB tar used under the corrupt-compression cases."""
    rng = random.Random(1234)
    return tar([m(f"src/f{i}.txt", " ".join(rng.choices(_WORDS, k=2000)).encode()) for i in range(8)])


def _corrupt_build(fmt: Compression) -> Callable[[], bytes]:
    return lambda: corrupt(compress(payload(), fmt))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


BROKEN_CASES: list[HostileCase] = [
    # broken archives
    HostileCase(
        "truncated_data",
        "big.bin",
        "reject",
        "the archive ends in the middle of a member's data",
        lambda: tar([m("big.bin", random.Random(1).randbytes(10000))])[: 512 + 5000],
    ),
    HostileCase(
        "truncated_header",
        None,
        "reject",
        "the archive ends in the middle of a header",
        lambda: tar([m("ok.txt", _HELLO)])[:1024] + raw_header(b"cut.txt", size=3)[:200],
    ),
    HostileCase(
        "bad_checksum",
        None,
        "reject",
        "a header whose checksum does not match",
        lambda: raw_header(b"file.txt", size=len(_HELLO), checksum=0o12345) + pad(_HELLO) + end_of_archive(),
    ),
    HostileCase(
        "huge_size_claim",
        "huge.bin",
        "reject",
        "a header claims 1 TiB and the archive ends right after",
        lambda: header_only("huge.bin", 1 << 40),
    ),
    HostileCase(
        "pax_size_not_a_number",
        "victim.txt",
        "reject",
        "a pax 'size' record that is not a number",
        lambda: tar([m("victim.txt", _HELLO, pax={"size": "abc"}), m("next.txt", _HELLO)]),
    ),
    HostileCase(
        "pax_size_negative",
        "victim.txt",
        "reject",
        "a negative pax 'size' (a naive reader seeks backwards)",
        lambda: tar([m("victim.txt", _HELLO, pax={"size": "-1024"}), m("next.txt", _HELLO)]),
    ),
    HostileCase(
        "pax_record_length_bogus",
        None,
        "reject",
        "a pax record whose length runs far past the extended header",
        lambda: (
            raw_header(b"././@PaxHeader", typeflag=b"x", size=len(_PAX_BODY))
            + pad(_PAX_BODY)
            + raw_file(b"victim.txt", _HELLO)
            + end_of_archive()
        ),
    ),
    HostileCase(
        "not_a_tar",
        None,
        "reject",
        "random bytes, no archive at all",
        lambda: random.Random(99).randbytes(4096),
    ),
    HostileCase(
        "gzip_of_garbage",
        None,
        "reject",
        "a valid gzip stream whose content is not a tar",
        lambda: compress(random.Random(98).randbytes(4096), "gzip"),
        "gzip",
    ),
    HostileCase("empty_input", None, "reject", "zero bytes", lambda: b""),
    # broken compression
    HostileCase(
        "truncated_gzip",
        None,
        "reject",
        "the gzip stream stops half way (no trailer)",
        lambda: _half(compress(payload(), "gzip")),
        "gzip",
    ),
    HostileCase(
        "decompression_bomb",
        None,
        "reject",
        f"~2 MB of gzip inflating to 2 GiB (16 x 128 MiB of zeros); limit {BOMB_MAX_BYTES >> 20} MiB",
        functools.cache(lambda: gzip_zero_bomb(BOMB_PARTS, BOMB_PART)),
        "gzip",
        max_bytes=BOMB_MAX_BYTES,
    ),
    *(
        HostileCase(
            f"corrupt_{fmt}",
            None,
            "reject",
            f"16 inverted bytes in the middle of the {fmt} stream",
            _corrupt_build(fmt),
            fmt,
        )
        for fmt in _CORRUPTIBLE
    ),
]
"""Broken archives and streams, in a fixed order."""
