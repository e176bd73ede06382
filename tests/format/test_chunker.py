"""Tests of the xor32 content-defined chunker against the format reference (section 6)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcds.errors import ConfigError
from rcds.format.chunker import (
    ChunkParams,
    StreamChunker,
    _hit_mask,
    find_cuts,
    rolling_xor32,
    should_chunk,
)

MASK32 = 0xFFFFFFFF
MAGIC = 0x7FFFFFFF
SMALL = ChunkParams(64, 128, 256)
PARAM_SETS = [
    ChunkParams(32, 33, 34),
    ChunkParams(32, 64, 128),
    SMALL,
    ChunkParams(100, 1000, 3000),
    ChunkParams(4096, 8192, 16384),
]


def _hit(x: int, threshold: int) -> bool:
    d = (x - MAGIC) & MASK32
    if d >= 1 << 31:
        d -= 1 << 32
    return d == -(1 << 31) or abs(d) < threshold


def _reference_cuts(data: bytes, params: ChunkParams) -> list[int]:
    """Section 6.3, transcribed literally (slow)."""
    n, mn, mx, t = len(data), params.min_size, params.max_size, params.threshold
    cuts: list[int] = []
    last = 0
    while True:
        start = last + mn - 32
        if start >= n:
            break
        x = 0
        for i in range(start, min(last + mn, n)):
            x = ((x << 1) ^ data[i]) & MASK32
        cut = None
        for i in range(last + mn, min(last + mx, n)):
            x = ((x << 1) ^ data[i]) & MASK32
            if _hit(x, t):
                cut = i
                break
        if cut is None:
            if last + mx < n:
                cut = last + mx
            else:
                break
        cuts.append(cut)
        last = cut
    return cuts


def _lcg_bytes(n: int) -> bytes:
    """Section 6.5's stream: s = s*1103515245 + 12345 mod 2^32, byte = (s >> 16) & 0xFF."""
    a, c = 1103515245, 12345
    s = np.array([(a * 12345 + c) & MASK32], dtype=np.uint64)
    step_a, step_c = a, c  # the len(s)-step transform
    while len(s) < n:
        s = np.concatenate([s, (s * np.uint64(step_a) + np.uint64(step_c)) & np.uint64(MASK32)])
        step_a, step_c = step_a * step_a & MASK32, (step_a * step_c + step_c) & MASK32
    return ((s[:n] >> np.uint64(16)) & np.uint64(0xFF)).astype(np.uint8).tobytes()


def _random(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _stream(data: bytes, params: ChunkParams, sizes: list[int]) -> list[bytes]:
    chunker = StreamChunker(params)
    chunks: list[bytes] = []
    pos = i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks += chunker.feed(data[pos : pos + size])
        pos += size
        i += 1
    return chunks + chunker.finish()


def _boundaries(chunks: list[bytes]) -> list[int]:
    out, pos = [], 0
    for chunk in chunks[:-1]:
        pos += len(chunk)
        out.append(pos)
    return out


# --- 6.4 / 6.5 vectors ----------------------------------------------------------------


def test_rolling_values_6_4() -> None:
    assert rolling_xor32(bytes([5, 255, 0, 32, 27])) == [5, 245, 490, 1012, 2035]


def test_rolling_matches_pure_python() -> None:
    data = _random(2000, 1) + b"\xff" * 40 + b"\x01" * 40
    x, expected = 0, []
    for b in data:
        x = ((x << 1) ^ b) & MASK32
        expected.append(x)
    assert rolling_xor32(data) == expected
    assert rolling_xor32(b"") == []
    assert rolling_xor32(memoryview(data)[:3]) == expected[:3]


def test_lcg_vector_1mib() -> None:
    data = _lcg_bytes(1 << 20)
    assert data[:8].hex() == "dc0465aa1fad1d5a"
    assert hashlib.sha1(data).hexdigest() == "a3bb75cf8f195c6e85bd34a13715b90bc8bd4f5f"
    params = ChunkParams(4096, 8192, 16384)
    cuts = find_cuts(data, params)
    assert len(cuts) == 135
    assert cuts[:16] == [6029, 14358, 20145, 27472, 34824, 43546, 49789, 61476,
                         70255, 76196, 81426, 96013, 100160, 105391, 109554, 117428]  # fmt: skip
    assert cuts[-3:] == [1029296, 1035801, 1041186]
    assert _reference_cuts(data, params) == cuts


def test_lcg_vector_4mib() -> None:
    cuts = find_cuts(_lcg_bytes(4 << 20), ChunkParams(65536, 131072, 262144))
    assert len(cuts) == 34
    assert cuts[:4] == [121493, 254254, 442937, 544219]


# --- the hit test -----------------------------------------------------------------------


@pytest.mark.parametrize("avg", [33, 128, 1000, 8 << 20, 0xFFFFFFFF])
def test_hit_boundaries(avg: int) -> None:
    t = 0xFFFFFFFF // avg
    values = {0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF}
    for delta in (t - 1, t, t + 1):
        values |= {(MAGIC - delta) & MASK32, (MAGIC + delta) & MASK32}
    xs = np.array(sorted(values), dtype=np.uint32)
    out = np.empty(len(xs), np.bool_)
    _hit_mask(xs.copy(), t, out)
    assert out.tolist() == [_hit(int(x), t) for x in xs]
    assert out[list(xs).index(0xFFFFFFFF)]  # abs(INT_MIN) under -fwrapv


# --- find_cuts against the literal reference ----------------------------------------------


@pytest.mark.parametrize("params", PARAM_SETS, ids=lambda p: f"{p.min_size}-{p.avg_size}-{p.max_size}")
def test_find_cuts_matches_reference(params: ChunkParams) -> None:
    mn, mx = params.min_size, params.max_size
    lengths = [0, 1, mn - 1, mn, mn + 1, mx - 1, mx, mx + 1, 2 * mx, 2 * mx + 1, 5 * mx + 7]
    for seed, n in enumerate(lengths):
        data = _random(n, seed)
        assert find_cuts(data, params) == _reference_cuts(data, params), n
    big = _random(max(200_000, 20 * mx), 99)
    cuts = find_cuts(big, params)
    assert cuts == _reference_cuts(big, params)
    assert cuts == find_cuts(memoryview(big), params) == find_cuts(bytearray(big), params)
    sizes = np.diff([0, *cuts, len(big)])
    assert sizes[:-1].min() >= mn and sizes.max() <= mx


@pytest.mark.parametrize("params", PARAM_SETS[1:4], ids=lambda p: f"{p.min_size}-{p.avg_size}")
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x01, 0x80])
def test_constant_data(params: ChunkParams, fill: int) -> None:
    for n in (params.max_size + 1, 10 * params.max_size + 3):
        data = bytes([fill]) * n
        assert find_cuts(data, params) == _reference_cuts(data, params)


def test_all_ones_hit_via_int_min() -> None:
    # 32 bytes of 0x01 roll to x == 0xFFFFFFFF: every position is a hit (only via abs(INT_MIN))
    assert find_cuts(b"\x01" * 1000, SMALL) == list(range(64, 1000, 64))
    assert find_cuts(b"\x00" * 1000, SMALL) == [256, 512, 768]  # no hit at all: hard cuts


def test_planted_windows() -> None:
    # windows of 0/1 bytes spelling x (MSB first) plant values right at the hit-range edges
    t = SMALL.threshold
    parts = []
    for x in (MAGIC - t, MAGIC - t + 1, MAGIC + t - 1, MAGIC + t, MASK32, 0x80000000):
        parts.append(_random(70, x) + bytes((x >> k) & 1 for k in range(31, -1, -1)))
    data = b"".join(parts * 3)
    assert find_cuts(data, SMALL) == _reference_cuts(data, SMALL)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(PARAM_SETS[:3]))
def test_find_cuts_hypothesis(data: bytes, params: ChunkParams) -> None:
    assert find_cuts(data, params) == _reference_cuts(data, params)


# --- streaming ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 5000),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(1, 700), min_size=1, max_size=20),
    st.sampled_from(PARAM_SETS[:4]),
)
def test_stream_equals_find_cuts(n: int, seed: int, sizes: list[int], params: ChunkParams) -> None:
    data = _random(n, seed)
    chunks = _stream(data, params, sizes)
    assert b"".join(chunks) == data
    assert all(chunks)
    assert _boundaries(chunks) == find_cuts(data, params)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), min_size=1, max_size=10))
def test_stream_hypothesis_binary(data: bytes, sizes: list[int]) -> None:
    chunks = _stream(data, SMALL, sizes)
    assert b"".join(chunks) == data
    assert _boundaries(chunks) == find_cuts(data, SMALL)


def test_stream_memory_bound_and_reuse() -> None:
    params = ChunkParams(4096, 8192, 16384)
    data = _lcg_bytes(1 << 20)
    chunker = StreamChunker(params)
    block = 5000
    for _ in range(2):  # reusable after finish()
        chunks: list[bytes] = []
        for pos in range(0, len(data), block):
            chunks += chunker.feed(data[pos : pos + block])
            assert chunker.buffered <= params.max_size + block
        chunks += chunker.finish()
        assert chunker.buffered == 0
        assert b"".join(chunks) == data
        assert _boundaries(chunks) == find_cuts(data, params)
    assert chunker.finish() == []


def test_stream_default_params() -> None:
    data = _random(60 << 20, 7)
    cuts = find_cuts(data, ChunkParams.default())
    assert len(cuts) >= 3
    chunks = _stream(data, ChunkParams.default(), [1 << 20, 3 << 20, 777_777])
    assert _boundaries(chunks) == cuts
    assert b"".join(chunks) == data
    assert StreamChunker().params == ChunkParams.default()


def test_stream_one_shot() -> None:
    data = _random(10_000, 3)
    chunker = StreamChunker(SMALL)
    chunks = chunker.feed(data) + chunker.finish()
    assert _boundaries(chunks) == find_cuts(data, SMALL)
    short = StreamChunker(SMALL)
    assert short.feed(b"abc") == [] and short.finish() == [b"abc"]


# --- parameters -------------------------------------------------------------------------------


def test_params_default_and_should_chunk() -> None:
    p = ChunkParams.default()
    assert (p.min_size, p.avg_size, p.max_size) == (4 << 20, 8 << 20, 16 << 20)
    assert p.threshold == 0xFFFFFFFF // (8 << 20)
    assert not should_chunk(4 << 20, p) and should_chunk((4 << 20) + 1, p)
    assert not should_chunk(0, p)


@pytest.mark.parametrize(
    "sizes",
    [
        (31, 64, 128),
        (64, 64, 128),
        (64, 128, 128),
        (64, 32, 128),
        (0, 1, 2),
        (64, 128, 2**32),
        (64.0, 128, 256),
    ],
)
def test_params_invalid(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError):
        ChunkParams(*sizes)


def test_params_rejects_bool() -> None:
    with pytest.raises(ConfigError):
        ChunkParams(True, 128, 256)
