"""The alien cache: raw stored objects on shared storage, verified on every read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from rcds.client.cache.alien import AlienCache
from rcds.errors import IntegrityError
from rcds.format.compression import make_object, verify_object
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind, parse_object_name

FILE = ObjectKind.FILE
CATALOG = ObjectKind.CATALOG


def test_roundtrip_layout_and_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        alien = AlienCache(tmp_path / "alien")
    finally:
        os.umask(old)
    plain = b"catalog bytes " * 100
    obj = make_object(plain)
    path = alien.put_raw(obj.hash, CATALOG, obj.data)
    assert path == tmp_path / "alien" / obj.hash.object_name(CATALOG).removeprefix("data/")
    assert path.read_bytes() == obj.data  # raw stored (compressed) bytes
    assert (path.stat().st_mode & 0o777) == 0o660
    assert (path.parent.stat().st_mode & 0o777) == 0o770
    assert ((tmp_path / "alien" / "txn").stat().st_mode & 0o777) == 0o770
    assert alien.get_verified(obj.hash, CATALOG, len(plain)) == plain
    assert alien.get_verified(obj.hash, CATALOG) == plain
    assert alien.get_verified(obj.hash, FILE) is None  # another kind, another name
    assert list(alien.txn.iterdir()) == []


def test_other_algorithms_and_uncompressed(tmp_path: Path) -> None:
    alien = AlienCache(tmp_path / "alien")
    obj = make_object(b"x" * 5000, Algorithm.SHAKE128)
    alien.put_raw(obj.hash, FILE, obj.data)
    assert alien.get_verified(obj.hash, FILE, 5000) == b"x" * 5000
    raw = make_object(b"stored as is", compressed=False)
    alien.put_raw(raw.hash, FILE, raw.data)
    assert alien.get_verified(raw.hash, FILE, compressed=False) == b"stored as is"


def test_missing_and_vanishing_objects_are_misses(tmp_path: Path) -> None:
    alien = AlienCache(tmp_path / "alien")
    obj = make_object(b"soon gone")
    assert alien.get_verified(obj.hash, FILE) is None
    alien.put_raw(obj.hash, FILE, obj.data).unlink()  # a site cleanup
    assert alien.get_verified(obj.hash, FILE) is None
    shutil.rmtree(tmp_path / "alien" / obj.hash.digest.hex()[:2])
    shutil.rmtree(tmp_path / "alien" / "txn")
    alien.put_raw(obj.hash, FILE, obj.data)  # the skeleton is recreated
    assert alien.get_verified(obj.hash, FILE) == b"soon gone"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "empty", "other-object"])
def test_corrupt_entries_are_misses_and_removed(tmp_path: Path, damage: str) -> None:
    alien = AlienCache(tmp_path / "alien")
    obj = make_object(b"precious " * 1000)
    path = alien.put_raw(obj.hash, FILE, obj.data)
    bad = {
        "garbage": b"not zlib at all",
        "truncated": obj.data[: len(obj.data) // 2],
        "flipped": obj.data[:-1] + bytes([obj.data[-1] ^ 1]),
        "empty": b"",
        "other-object": make_object(b"another file").data,
    }[damage]
    path.write_bytes(bad)  # another node (or a broken disk) wrote nonsense
    assert alien.get_verified(obj.hash, FILE) is None
    assert not path.exists()
    alien.put_raw(obj.hash, FILE, obj.data)
    assert alien.get_verified(obj.hash, FILE) == b"precious " * 1000


def test_hash_matching_but_bad_stream_or_size(tmp_path: Path) -> None:
    alien = AlienCache(tmp_path / "alien")
    broken = b"\x78\x9c" + b"\x00" * 10  # hashes fine (we name it by its hash) but does not inflate
    h = ContentHash.of(broken)
    alien.put_raw(h, FILE, broken)
    assert alien.get_verified(h, FILE) is None
    obj = make_object(b"12345")
    alien.put_raw(obj.hash, FILE, obj.data)
    assert alien.get_verified(obj.hash, FILE, size=6) is None  # the catalog disagrees: a miss


def test_put_refuses_mismatching_bytes(tmp_path: Path) -> None:
    alien = AlienCache(tmp_path / "alien")
    obj = make_object(b"right")
    with pytest.raises(IntegrityError, match="refusing"):
        alien.put_raw(obj.hash, FILE, zlib.compress(b"wrong"))
    assert not alien.contains(obj.hash, FILE)
    assert list(alien.txn.iterdir()) == []


def test_existing_object_is_not_rewritten(tmp_path: Path) -> None:
    alien = AlienCache(tmp_path / "alien")
    obj = make_object(b"once")
    first = alien.put_raw(obj.hash, FILE, obj.data).stat()
    second = alien.put_raw(obj.hash, FILE, obj.data).stat()
    assert (first.st_ino, first.st_mtime_ns) == (second.st_ino, second.st_mtime_ns)


def test_old_temp_files_are_cleaned(tmp_path: Path) -> None:
    AlienCache(tmp_path / "alien")
    txn = tmp_path / "alien" / "txn"
    old, fresh = txn / "999999.old.tmp", txn / "999999.fresh.tmp"
    for f in (old, fresh):
        f.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    AlienCache(tmp_path / "alien")
    assert sorted(p.name for p in txn.iterdir()) == [fresh.name]  # another node may still write it


WORKER = textwrap.dedent(
    """
    import random, sys, time
    from pathlib import Path
    from rcds.client.cache.alien import AlienCache
    from rcds.format.compression import make_object
    from rcds.format.hashes import ObjectKind

    directory, proc, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    while not Path(directory + ".go").exists():
        time.sleep(0.01)
    alien = AlienCache(Path(directory))
    for i in range(count):
        tag = f"shared-{i}" if i % 2 == 0 else f"{proc}-{i}"
        plain = (tag.encode() + b"|") * random.Random(tag).randint(10, 400)  # same bytes in both
        obj = make_object(plain)
        kind = ObjectKind.CATALOG if i % 7 == 0 else ObjectKind.FILE
        got = alien.get_verified(obj.hash, kind, len(plain))
        if got is None:
            alien.put_raw(obj.hash, kind, obj.data)
            got = alien.get_verified(obj.hash, kind, len(plain))
        assert got == plain, f"bad read of {tag}"
    """
)


def test_two_processes_share_one_alien_cache(tmp_path: Path) -> None:
    d = tmp_path / "alien"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(d), name, "200"], stdout=subprocess.DEVNULL)
        for name in ("n1", "n2")
    ]
    Path(f"{d}.go").touch()
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    count = 0
    for sub in d.iterdir():
        if len(sub.name) == 2:
            for f in sub.iterdir():
                h, _ = parse_object_name(f"data/{sub.name}/{f.name}")
                verify_object(f.read_bytes(), h)
                count += 1
    assert count == 300  # 100 shared + 2 x 100 private objects
    assert list((d / "txn").iterdir()) == []
