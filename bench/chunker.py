"""Throughput of find_cuts on 256 MiB of random data, next to zlib -6 + SHA-1 on the same data.

Run: ``python bench/chunker.py [MiB]``.
"""

from __future__ import annotations

import hashlib
import sys
import time
import zlib

import numpy as np

from rcds.format.chunker import ChunkParams, find_cuts


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 256) << 20
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()

    t0 = time.perf_counter()
    for pos in range(0, size, 8 << 20):  # stock compresses and hashes chunk by chunk
        hashlib.sha1(zlib.compress(data[pos : pos + (8 << 20)], 6)).digest()
    baseline = _rate(size, time.perf_counter() - t0)
    print(f"zlib -6 + sha1: {baseline:8.1f} MB/s")

    for params in (ChunkParams.default(), ChunkParams(65536, 131072, 262144), ChunkParams(4096, 8192, 16384)):
        t0 = time.perf_counter()
        cuts = find_cuts(data, params)
        rate = _rate(size, time.perf_counter() - t0)
        label = f"find_cuts {params.min_size >> 10}K/{params.avg_size >> 10}K/{params.max_size >> 10}K"
        print(f"{label:28}: {rate:8.1f} MB/s  ({len(cuts)} cuts, {rate / baseline:.1f}x baseline)")


if __name__ == "__main__":
    main()
