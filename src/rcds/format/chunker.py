"""Content-defined file chunking, cut-for-cut identical to stock's xor32 detector.

The stock detector (format reference section 6.3) restarts a rolling value
``x = ((x << 1) ^ byte) mod 2**32`` 32 bytes before every possible cut, so bytes
shifted 32 or more times have vanished by the time ``x`` is tested, and ``x`` at byte
``i`` is a function of the 32 bytes ending at ``i`` only::

    x_i = XOR_{k=0..31} (data[i-k] << k) mod 2**32

That window value is computed for whole blocks with numpy by log-doubling (five
shift-and-xor rounds), tested vectorised, and the cuts are then picked greedily from
the sparse hit positions. Only the stretches of a file where a cut can fall are
scanned, so roughly half of the input is never looked at with the stock parameters.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from rcds.errors import ConfigError

__all__ = ["ChunkParams", "StreamChunker", "find_cuts", "rolling_xor32", "should_chunk"]

_MAGIC = 0x7FFFFFFF
_WINDOW = 32
_BLOCK = 1 << 16  # positions tested per numpy pass; small enough to stay in cache
_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """Minimum, average and maximum chunk size in bytes (``32 <= min < avg < max``)."""

    min_size: int
    avg_size: int
    max_size: int

    DEFAULT_MIN: ClassVar[int] = 4 * _MiB
    DEFAULT_AVG: ClassVar[int] = 8 * _MiB
    DEFAULT_MAX: ClassVar[int] = 16 * _MiB

    def __post_init__(self) -> None:
        sizes = (self.min_size, self.avg_size, self.max_size)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise ConfigError(f"chunk sizes must be integers, got {sizes!r}")
        if not _WINDOW <= self.min_size < self.avg_size < self.max_size:
            raise ConfigError(
                f"chunk sizes min={self.min_size} avg={self.avg_size} max={self.max_size} are invalid;"
                f" they must satisfy {_WINDOW} <= min < avg < max (stock: 4, 8 and 16 MiB)"
            )
        if self.max_size > 0xFFFFFFFF:
            raise ConfigError(f"the maximum chunk size {self.max_size} is too large; use at most 4 GiB - 1")

    @classmethod
    def default(cls) -> ChunkParams:
        """Stock defaults: 4 MiB / 8 MiB / 16 MiB."""
        return cls(cls.DEFAULT_MIN, cls.DEFAULT_AVG, cls.DEFAULT_MAX)

    @property
    def threshold(self) -> int:
        """Stock's ``T = 0xFFFFFFFF // avg``: a hit is ``|x - 0x7FFFFFFF| < T`` (int32 arithmetic)."""
        return 0xFFFFFFFF // self.avg_size


def should_chunk(size: int, params: ChunkParams) -> bool:
    """Whether stock would run the chunker on a file of ``size`` bytes (``size > min``)."""
    return size > params.min_size


def _rolling_into(
    seg: npt.NDArray[np.uint8],
    y: npt.NDArray[np.uint16],
    t16: npt.NDArray[np.uint16],
    z: npt.NDArray[np.uint32],
    t32: npt.NDArray[np.uint32],
) -> npt.NDArray[np.uint32]:
    """Window values of ``seg`` (as if x started at 0 before it) into ``z[:len(seg)]``.

    Round ``s`` turns window-``s`` values into window-``2s`` ones:
    ``y_2s[i] = y_s[i] ^ (y_s[i-s] << s)``. Windows of up to 8 bytes fit in 15 bits.
    """
    m = len(seg)
    y, z = y[:m], z[:m]
    np.copyto(y, seg)
    for s in (1, 2, 4):
        if m > s:
            np.left_shift(y[:-s], s, out=t16[: m - s])
            np.bitwise_xor(y[s:], t16[: m - s], out=y[s:])
    np.copyto(z, y)
    for s in (8, 16):
        if m > s:
            np.left_shift(z[:-s], s, out=t32[: m - s])
            np.bitwise_xor(z[s:], t32[: m - s], out=z[s:])
    return z


def _hit_mask(x: npt.NDArray[np.uint32], threshold: int, out: npt.NDArray[np.bool_]) -> None:
    """``out = hit(x)``, clobbering ``x``.

    ``x ^ MAGIC`` read as int32 is exactly ``MAGIC - x``, the negation of stock's wrapped
    ``x - MAGIC``; numpy's wrapping ``abs`` maps INT_MIN (``x == 0xFFFFFFFF``) to itself,
    which is below any threshold, as C's ``abs(INT_MIN)`` is under ``-fwrapv``.
    """
    np.bitwise_xor(x, np.uint32(_MAGIC), out=x)
    d = x.view(np.int32)
    np.abs(d, out=d)
    np.less(d, threshold, out=out)


def rolling_xor32(data: bytes | bytearray | memoryview) -> list[int]:
    """The rolling value after each byte, starting from ``x = 0`` (vectorised)."""
    seg = np.frombuffer(data, dtype=np.uint8)
    m = len(seg)
    u16, u32 = np.empty(m, np.uint16), np.empty(m, np.uint32)
    z = _rolling_into(seg, u16, np.empty(m, np.uint16), u32, np.empty(m, np.uint32))
    values: list[int] = z.tolist()
    return values


class _Scanner:
    """Finds hit positions block by block, reusing preallocated work arrays."""

    __slots__ = ("_mask", "_t16", "_t32", "_y", "_z", "block", "threshold")

    def __init__(self, params: ChunkParams, size_hint: int = _BLOCK) -> None:
        self.block = max(1, min(_BLOCK, size_hint))
        self.threshold = params.threshold
        n = self.block + _WINDOW - 1
        self._y, self._t16 = np.empty(n, np.uint16), np.empty(n, np.uint16)
        self._z, self._t32 = np.empty(n, np.uint32), np.empty(n, np.uint32)
        self._mask = np.empty(self.block, np.bool_)

    def hits(self, arr: npt.NDArray[np.uint8], lo: int, hi: int) -> list[int]:
        """Sorted positions ``i`` in ``[lo, hi)`` whose 32-byte window is a hit (``lo >= 31``)."""
        z = _rolling_into(arr[lo - _WINDOW + 1 : hi], self._y, self._t16, self._z, self._t32)
        mask = self._mask[: hi - lo]
        _hit_mask(z[_WINDOW - 1 :], self.threshold, mask)
        found: list[int] = (np.flatnonzero(mask) + lo).tolist()
        return found


def _greedy(arr: npt.NDArray[np.uint8], params: ChunkParams, scanner: _Scanner, final: bool) -> list[int]:
    """Cuts of ``arr`` per section 6.3, relative to its start (which must be a cut or 0).

    With ``final`` false more data may follow ``arr``: a chunk is only decided while more
    than ``max`` bytes follow its start, so every returned cut is already definitive.
    """
    n = len(arr)
    mn, mx = params.min_size, params.max_size
    cuts: list[int] = []
    last = lo = hi = 0  # hits are known for positions [lo, hi)
    hits: list[int] = []
    while final or n - last > mx:
        a, end = last + mn, min(last + mx, n)  # a >= 32 > window - 1
        cut = -1
        while a < end:
            if not lo <= a < hi:
                lo, hi = a, min(n, a + scanner.block)
                hits = scanner.hits(arr, lo, hi)
            j = bisect_left(hits, a)
            if j < len(hits) and hits[j] < end:
                cut = hits[j]
                break
            a = hi
        if cut < 0:
            if last + mx >= n:
                break  # the file ends within max: the rest is the last chunk
            cut = last + mx
        cuts.append(cut)
        last = cut
    return cuts


def find_cuts(data: bytes | bytearray | memoryview, params: ChunkParams) -> list[int]:
    """Cut offsets ``c1 < ... < ck`` of a whole file: chunks ``[0,c1), [c1,c2), ..., [ck,n)``.

    An empty list means one piece (stock then stores the file unchunked).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    return _greedy(arr, params, _Scanner(params, len(arr)), final=True)


class StreamChunker:
    """Chunks a file fed block by block, with the same cuts as :func:`find_cuts`.

    At most ``max_size`` bytes plus the last block fed are held in memory.
    Reusable: after :meth:`finish` it starts a new file.
    """

    __slots__ = ("_buf", "_scanner", "params")

    def __init__(self, params: ChunkParams | None = None) -> None:
        self.params = params if params is not None else ChunkParams.default()
        self._buf = bytearray()
        self._scanner = _Scanner(self.params)

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a chunk."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add the next block of the file; returns the chunks completed by it (maybe none)."""
        self._buf += data
        if len(self._buf) <= self.params.max_size:
            return []
        return self._take(final=False)

    def finish(self) -> list[bytes]:
        """End of file: returns the remaining chunks (none if nothing is left)."""
        chunks = self._take(final=True) if self._buf else []
        if self._buf:
            chunks.append(bytes(self._buf))
            self._buf = bytearray()
        return chunks

    def _take(self, final: bool) -> list[bytes]:
        arr = np.frombuffer(self._buf, dtype=np.uint8)
        try:
            cuts = _greedy(arr, self.params, self._scanner, final)
        finally:
            del arr  # release the buffer export before resizing
        chunks: list[bytes] = []
        prev = 0
        with memoryview(self._buf) as view:
            for cut in cuts:
                chunks.append(view[prev:cut].tobytes())
                prev = cut
        del self._buf[:prev]
        return chunks
