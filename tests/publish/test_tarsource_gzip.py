"""gzip tarballs are inflated by ISA-L on a thread of their own: same members, clear errors, and
the thread ends with the ingest however it ends."""

from __future__ import annotations

import gzip
import io
import random
import threading
import time
from pathlib import Path

import pytest

from rcds.errors import InputError
from rcds.publish import tarsource
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.publish.tarsource import iter_tar

from testkit import NAME, Entry, make_tar

ENTRIES = [Entry(f"pkg/m{i}.py", f"value = {i}\n".encode() * (i * 50)) for i in range(40)]


def _inflaters() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if _is_inflater(t)}


def _no_inflater_left(before: set[threading.Thread]) -> bool:
    """No inflating thread but those of ``before`` (other tests' ingests may still be collected)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _inflaters() - before:
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
    before = _inflaters()
    tar = make_tar(ENTRIES, "none")
    gz = gzip.compress(tar, 6)
    assert _read_all(gz) == _read_all(tar)
    assert len(_read_all(gz)) == 40
    assert _no_inflater_left(before)


def test_a_gzip_stream_of_several_members_is_read_whole() -> None:
    tar = make_tar(ENTRIES, "none")
    half = len(tar) // 2
    two = gzip.compress(tar[:half]) + gzip.compress(tar[half:])  # like `cat a.gz b.gz`
    assert _read_all(two) == _read_all(tar)


@pytest.mark.parametrize("damage", ["truncate", "flip", "trailer"])
def test_corrupt_gzip_is_an_input_error_and_the_thread_ends(damage: str) -> None:
    before = _inflaters()
    gz = bytearray(gzip.compress(make_tar(ENTRIES, "none"), 6))
    if damage == "truncate":
        gz = gz[: len(gz) // 2]
    elif damage == "flip":
        gz[len(gz) // 2] ^= 0xFF
    else:
        gz[-6] ^= 0xFF  # the CRC-32 of the trailer
    with pytest.raises(InputError, match="corrupt or truncated"):
        _read_all(bytes(gz))
    assert _no_inflater_left(before)


def test_an_ingest_that_stops_early_stops_the_thread() -> None:
    big = [Entry(f"big{i}.bin", random.Random(i).randbytes(1 << 20)) for i in range(8)]  # > the read-ahead
    gz = gzip.compress(make_tar(ENTRIES + big, "none"), 1)
    before = _inflaters()
    members = iter_tar(io.BytesIO(gz))
    next(members)
    assert _inflaters() - before
    members.close()
    assert _no_inflater_left(before)


def test_a_failed_ingest_of_a_gzip_tarball_leaves_no_thread(tmp_path: Path) -> None:
    big = [Entry(f"big{i}.bin", random.Random(i).randbytes(1 << 20)) for i in range(8)]
    dup = [Entry("same", b"1"), *big, Entry("same", b"2")]  # refused at the second "same"
    create_repository(tmp_path / "r", Settings(name=NAME))
    s0 = Stratum0(tmp_path / "r", NAME)
    before = _inflaters()
    with pytest.raises(InputError, match="more than once"):
        s0.ingest_tar(io.BytesIO(gzip.compress(make_tar(dup, "none"), 1)), "/sw/x")
    assert not _inflaters() - before  # at once, not when the garbage collector gets to it
