"""gzip tarballs are inflated by ISA-L on a thread of their own: same members, clear errors, and
the thread ends with the ingest however it ends."""

from __future__ import annotations

import gzip
import io
import random
import threading
import time

import pytest

from rcds.errors import InputError
from rcds.publish import tarsource
from rcds.publish.tarsource import iter_tar

from testkit import Entry, make_tar

ENTRIES = [Entry(f"pkg/m{i}.py", f"value = {i}\n".encode() * (i * 50)) for i in range(40)]


def _no_inflater_left() -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if _is_inflater(t)]:
            return True
        time.sleep(0.02)
    return False


def _is_inflater(t: threading.Thread) -> bool:
    target = getattr(t, "_target", None)
    return target is not None and getattr(target, "__name__", "") == "_decompress"


def _read_all(data: bytes) -> dict[str, bytes]:
    out = {}
    for m in iter_tar(io.BytesIO(data)):
        if m.read is not None:
            out[m.path] = m.read(m.size)
    return out


def test_isal_inflates_gzip_tarballs_to_the_same_members() -> None:
    assert tarsource._igzip_threaded is not None  # isal is a dependency
    tar = make_tar(ENTRIES, "none")
    gz = gzip.compress(tar, 6)
    assert _read_all(gz) == _read_all(tar)
    assert len(_read_all(gz)) == 40
    assert _no_inflater_left()


def test_a_gzip_stream_of_several_members_is_read_whole() -> None:
    tar = make_tar(ENTRIES, "none")
    half = len(tar) // 2
    two = gzip.compress(tar[:half]) + gzip.compress(tar[half:])  # like `cat a.gz b.gz`
    assert _read_all(two) == _read_all(tar)


@pytest.mark.parametrize("damage", ["truncate", "flip", "trailer"])
def test_corrupt_gzip_is_an_input_error_and_the_thread_ends(damage: str) -> None:
    gz = bytearray(gzip.compress(make_tar(ENTRIES, "none"), 6))
    if damage == "truncate":
        gz = gz[: len(gz) // 2]
    elif damage == "flip":
        gz[len(gz) // 2] ^= 0xFF
    else:
        gz[-6] ^= 0xFF  # the CRC-32 of the trailer
    with pytest.raises(InputError, match="corrupt or truncated"):
        _read_all(bytes(gz))
    assert _no_inflater_left()


def test_an_ingest_that_stops_early_stops_the_thread() -> None:
    big = [Entry(f"big{i}.bin", random.Random(i).randbytes(1 << 20)) for i in range(8)]  # > the read-ahead
    gz = gzip.compress(make_tar(ENTRIES + big, "none"), 1)
    members = iter_tar(io.BytesIO(gz))
    next(members)
    assert [t for t in threading.enumerate() if _is_inflater(t)]
    members.close()
    assert _no_inflater_left()
