"""Prefetch under a real mount: a cold read brings its directory's small files, within the bound.

What is asserted is the local cache's content (objects present or absent), never timing; every
wait is bounded. The bound (:mod:`rcds.mount.repomount`): the first cold read in a directory
queues that directory's regular files of at most ``PREFETCH_MAX_FILE`` bytes, at most
``PREFETCH_MAX_BYTES`` in all, and nothing of other directories; a read that fetches a chunk of
a chunked file queues the next ``READ_AHEAD_CHUNKS`` chunks.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rcds.client.cache.local import object_name
from rcds.client.fetch.bulk import Wanted
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.mount.inodes import InodeSpace
from rcds.mount.prefetcher import RUN_OBJECTS, Prefetcher
from rcds.mount.repomount import PREFETCH_MAX_BYTES, PREFETCH_MAX_FILE, READ_AHEAD_CHUNKS, RepoMount

from mountkit import wait_for
from testkit import Entry

TOP = "sw/pf"
SMALL = [f"a{i:02d}.txt" for i in range(12)]
MANY_SIZE = 60_000  # below the test repository's chunking threshold: one object each
MANY = (PREFETCH_MAX_BYTES // MANY_SIZE) + 40  # more than the bound allows


def _many(i: int) -> bytes:
    return f"{i:05d}".encode() * (MANY_SIZE // 5)


@pytest.fixture
def pf_site(site: Any) -> Any:
    """The test site with a new revision: a directory of small files (with a chunked file and a
    subdirectory), a directory of more small files than the bound, and a sibling directory."""
    entries = [Entry(f"small/{n}", f"small file {n}\n".encode()) for n in SMALL]
    entries += [
        Entry("small/big.bin", site.big),  # chunked: not prefetched with the directory
        Entry("small/sub/deep.txt", b"deep\n"),
        Entry("other/o.txt", b"other\n"),
        Entry("many/sub/s.txt", b"below many\n"),
    ]
    entries += [Entry(f"many/f{i:05d}.dat", _many(i)) for i in range(MANY)]
    site.publish(entries, TOP)
    return site


@pytest.fixture(params=["in-daemon", "workers"])
def downloads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs with the downloads in the daemon and in 2 worker processes
    (``RCDS_MOUNT_PROCESSES``, read by the daemons the test starts): the bounds hold for both."""
    monkeypatch.setenv("RCDS_MOUNT_PROCESSES", "0" if request.param == "in-daemon" else "2")
    return str(request.param)


def _cached(cache: Path, hashes: list[ContentHash], kind: ObjectKind = ObjectKind.FILE) -> list[bool]:
    return [(cache / object_name(h, kind)).exists() for h in hashes]


def _hashes(repo: Any, paths: list[str]) -> list[ContentHash]:
    return [repo.entry(f"/{TOP}/{p}").hash for p in paths]


def _data_objects(cache: Path) -> int:
    """Plain file objects in the cache (no suffix: not catalogs, not chunks)."""
    return sum(
        1
        for bucket in cache.iterdir()
        if len(bucket.name) == 2 and bucket.is_dir()
        for name in os.listdir(bucket)
        if all(c in "0123456789abcdef" for c in name)
    )


@pytest.mark.usefixtures("downloads")
def test_a_cold_read_brings_the_directorys_small_files_only(pf_site: Any, mount_site: Any) -> None:
    m = mount_site()
    cache = Path(m.args[m.args.index("--cache") + 1])
    repo = pf_site.open()
    neighbours = _hashes(repo, [f"small/{n}" for n in SMALL[1:]])
    with open(m.mp / TOP / "small" / SMALL[0], "rb") as f:
        assert f.read() == f"small file {SMALL[0]}\n".encode()
    assert wait_for(lambda: all(_cached(cache, neighbours)), timeout=30), _cached(cache, neighbours)
    # not the subdirectory, not the sibling directory, not the chunked file
    assert _cached(cache, _hashes(repo, ["small/sub/deep.txt", "other/o.txt"])) == [False, False]
    chunks = pf_site.chunk_hashes(repo, f"/{TOP}/small/big.bin")
    assert len(chunks) > 1 and not any(_cached(cache, chunks, ObjectKind.PARTIAL))
    for n in SMALL:  # and what came by prefetch reads right
        assert (m.mp / TOP / "small" / n).read_bytes() == f"small file {n}\n".encode()
    assert (m.mp / TOP / "small" / "sub" / "deep.txt").read_bytes() == b"deep\n"


@pytest.mark.usefixtures("downloads")
def test_reading_one_file_fetches_no_more_than_the_bound(pf_site: Any, mount_site: Any) -> None:
    m = mount_site()
    cache = Path(m.args[m.args.index("--cache") + 1])
    repo = pf_site.open()
    names = [f"many/f{i:05d}.dat" for i in range(MANY)]
    hashes = _hashes(repo, names)
    within = PREFETCH_MAX_BYTES // MANY_SIZE  # files after the one read that fit the bound
    assert MANY_SIZE <= PREFETCH_MAX_FILE and within < MANY - 1
    before = _data_objects(cache)
    with open(m.mp / TOP / names[0], "rb") as f:
        assert f.read(5) == b"00000"
    assert wait_for(lambda: all(_cached(cache, hashes[1 : 1 + within])), timeout=60)
    time.sleep(0.5)  # anything queued beyond the bound would be arriving now
    assert not any(_cached(cache, hashes[1 + within :]))
    assert _cached(cache, _hashes(repo, ["many/sub/s.txt", "other/o.txt"])) == [False, False]
    assert _data_objects(cache) - before <= 1 + within  # the file read and its neighbours
    assert (m.mp / TOP / names[-1]).read_bytes() == _many(MANY - 1)  # beyond the bound: read on demand


@pytest.mark.usefixtures("downloads")
def test_a_chunked_file_read_brings_the_next_chunks(pf_site: Any, mount_site: Any) -> None:
    m = mount_site()
    cache = Path(m.args[m.args.index("--cache") + 1])
    repo = pf_site.open()
    chunks = pf_site.chunk_hashes(repo, f"/{TOP}/small/big.bin")
    assert len(chunks) > READ_AHEAD_CHUNKS + 1
    fd = os.open(m.mp / TOP / "small" / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == pf_site.big[:4096]
    finally:
        os.close(fd)
    ahead = chunks[1 : 1 + READ_AHEAD_CHUNKS]
    assert wait_for(lambda: all(_cached(cache, ahead, ObjectKind.PARTIAL)), timeout=30)
    time.sleep(0.3)  # the kernel may read a little beyond the first chunk, never to the end
    assert not _cached(cache, chunks[-1:], ObjectKind.PARTIAL)[0]
    assert (m.mp / TOP / "small" / "big.bin").read_bytes() == pf_site.big


@pytest.mark.usefixtures("downloads")
def test_prefetch_failing_breaks_no_read_of_cached_files(pf_site: Any, mount_site: Any) -> None:
    m = mount_site()
    cache = Path(m.args[m.args.index("--cache") + 1])
    repo = pf_site.open()
    assert (m.mp / TOP / "small" / SMALL[0]).read_bytes() == f"small file {SMALL[0]}\n".encode()
    assert wait_for(lambda: all(_cached(cache, _hashes(repo, [f"small/{n}" for n in SMALL[1:]]))), timeout=30)
    for srv in pf_site.servers:
        srv.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as exc:  # its directory's prefetch fails too
        (m.mp / TOP / "many" / "f00000.dat").read_bytes()
    assert exc.value.errno == errno.EIO
    with pytest.raises(OSError) as exc:  # a neighbour whose prefetch failed: EIO, no hang
        (m.mp / TOP / "many" / "f00001.dat").read_bytes()
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 40  # the configured timeouts, twice at most
    for n in SMALL:  # cached by the earlier prefetch: still served
        assert (m.mp / TOP / "small" / n).read_bytes() == f"small file {n}\n".encode()


def _laneless(site: Any, tmp_path: Path) -> tuple[Any, RepoMount]:
    """A repository with an empty cache and its RepoMount whose prefetcher has no lanes: what
    gets fetched is what readers' runs fetch."""
    repo = site.open(cache_dir=tmp_path / "cache")
    rm = RepoMount(repo, InodeSpace(repo.fqrn, shared=False), owner=None)
    rm.prefetcher.close()
    rm.prefetcher = Prefetcher(repo.source, lanes=0)
    return repo, rm


def test_the_file_read_first_comes_with_its_neighbours_in_one_run(pf_site: Any, tmp_path: Path) -> None:
    repo, rm = _laneless(pf_site, tmp_path)
    pf = rm.prefetcher
    read = SMALL[3]
    assert len(SMALL) <= RUN_OBJECTS
    assert rm.prefetch_directory(f"/{TOP}/small", skip=read) == len(SMALL)  # the file read is queued too
    hashes = _hashes(repo, [f"small/{n}" for n in SMALL])
    assert not any(repo.source.is_cached(h, ObjectKind.FILE) for h in hashes)
    before = pf_site.fetched("data/")
    pf.wait(hashes[3], ObjectKind.FILE)  # queued: the reader takes it with the run planned after it
    assert repo.source.is_cached(hashes[3], ObjectKind.FILE)  # the reader's own object is in
    assert pf.runs == 1 and pf.taken == len(SMALL)
    # the rest of the run is received in the background
    assert wait_for(lambda: not any(pf.pending(h, ObjectKind.FILE) for h in hashes), timeout=30)
    assert all(repo.source.is_cached(h, ObjectKind.FILE) for h in hashes)
    assert pf_site.fetched("data/") - before == len(SMALL)  # each object once
    repo.source.flush()
    assert all(_cached(tmp_path / "cache", hashes))


def test_a_run_is_bounded_and_readers_of_its_objects_wait_for_them(pf_site: Any, tmp_path: Path) -> None:
    repo, rm = _laneless(pf_site, tmp_path)
    pf = rm.prefetcher
    names = [f"many/f{i:05d}.dat" for i in range(3 * RUN_OBJECTS)]
    entries = [repo.entry(f"/{TOP}/{n}") for n in names]
    hashes = [e.hash for e in entries]
    assert pf.want(Wanted(e.hash, ObjectKind.FILE, e.size, e.compressed) for e in entries) == len(names)
    before = pf_site.fetched("data/")
    found: dict[int, bool] = {}

    def read(i: int) -> None:  # as a read does: wait, then the object must be there
        pf.wait(hashes[i], ObjectKind.FILE, 30)
        found[i] = repo.source.is_cached(hashes[i], ObjectKind.FILE)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(RUN_OBJECTS)]
    for t in readers:  # the first takes a run; the others wait for their object in it (or take one)
        t.start()
    for t in readers:
        t.join(60)
    assert found == dict.fromkeys(range(RUN_OBJECTS), True)
    assert pf.taken >= RUN_OBJECTS and pf.taken <= pf.runs * RUN_OBJECTS
    # the rest of each run arrives in the background; what no reader took stays queued
    left = len(names) - pf.taken
    assert wait_for(lambda: sum(pf.pending(h, ObjectKind.FILE) for h in hashes) == left, timeout=30)
    assert pf_site.fetched("data/") - before == pf.taken  # each object fetched once
    cached = {h: repo.source.is_cached(h, ObjectKind.FILE) for h in hashes}
    assert all(cached[h] != pf.pending(h, ObjectKind.FILE) for h in hashes)
    pf.close()
    assert not any(pf.pending(h, ObjectKind.FILE) for h in hashes)
