"""Object-writing worker processes: same bytes as the in-process path, clear failures, no orphans."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.errors import StorageError
from rcds.format.compression import decompress, make_object
from rcds.format.deflaters import Compression
from rcds.format.hashes import Algorithm, ObjectKind
from rcds.publish import objects, objworker, workers
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.members import Member
from rcds.publish.stratum0 import Stratum0
from rcds.publish.tarsource import iter_tar
from rcds.storage.local import LocalStore

from testkit import NAME, SMALL_CHUNKS, Entry, make_tar, verify


def _entries(n: int = 600) -> list[Entry]:
    """Many small files (some identical, one empty), a directory, links and a chunked file."""
    out = [Entry("pkg", kind="dir", mode=0o755)]
    for i in range(n):
        out.append(Entry(f"pkg/m{i}.py", (f"# module {i}\n" + f"v_{i} = {i}\n" * (i % 97)).encode()))
    out += [Entry(f"pkg/same{i}.txt", b"identical content\n") for i in range(5)]
    out += [Entry("pkg/empty", b""), Entry("pkg/link", kind="symlink", target="m1.py")]
    out += [Entry("pkg/hard", kind="hardlink", target="pkg/m2.py")]
    out.append(Entry("data/big.bin", os.urandom(700 << 10)))  # chunked: stays on threads
    return out


NOW = 2_000_000_000  # after the repositories' creation: a revision is never dated before the previous one


def _repo(root: Path, compression: str = "zlib:6") -> Stratum0:
    create_repository(root, Settings(name=NAME, compression=compression, **SMALL_CHUNKS))  # type: ignore[arg-type]
    return Stratum0(root, NAME)


def _objects(s0: Stratum0) -> dict[str, bytes]:
    """File and chunk objects (catalogs and certificates differ between two repositories)."""
    store = s0.store
    return {name: store.get(name) for name in store.list_objects() if name[-1] not in "CHXM"}


@pytest.fixture
def fresh_pool() -> Iterator[None]:
    """No pool before the test; the pool of the test is stopped after it."""
    workers.shutdown()
    yield
    workers.shutdown()


@pytest.fixture
def always_processes(monkeypatch: pytest.MonkeyPatch, fresh_pool: None) -> None:
    """Worker processes for every small content, from the first file on."""
    monkeypatch.setenv(workers.ENV_PROCESSES, "2")
    monkeypatch.setattr(objects, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(objects, "BATCH_FILES", 7)  # many batches, so several are in flight at once


@pytest.mark.parametrize("compression", ["zlib:6", "zlib:1", "libdeflate:5", "isal:2"])
def test_worker_processes_store_exactly_what_the_in_process_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always_processes: None, compression: str, view_factory
) -> None:
    tar = make_tar(_entries(), "none")
    monkeypatch.setenv(workers.ENV_PROCESSES, "0")
    threads = _repo(tmp_path / "threads", compression)
    r_threads = threads.ingest_tar(io.BytesIO(tar), "/sw/grp/cid", now=NOW)
    assert workers._shared is None  # nothing was started
    monkeypatch.setenv(workers.ENV_PROCESSES, "2")
    procs = _repo(tmp_path / "procs", compression)
    r_procs = procs.ingest_tar(io.BytesIO(tar), "/sw/grp/cid", now=NOW)
    pool = workers._shared
    assert pool is not None and len(pool.pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pool.pids)
    # byte for byte: every file and chunk object; the same catalog entries (row order may differ)
    assert _objects(procs) == _objects(threads)
    v_procs, v_threads = view_factory(procs), view_factory(threads)
    assert list(v_procs.walk("/sw/grp/cid")) == list(v_threads.walk("/sw/grp/cid"))
    big = "/sw/grp/cid/data/big.bin"
    assert v_procs.catalog_for(big).chunks(v_procs.lookup(big)) == v_threads.catalog_for(big).chunks(
        v_threads.lookup(big)
    )
    assert (r_procs.stats.files, r_procs.stats.bytes_in) == (r_threads.stats.files, r_threads.stats.bytes_in)
    assert r_procs.stats.objects_written >= len(_objects(procs)) - 2  # all but the two catalogs
    verify(procs)
    assert os.listdir(procs.layout.public / "data" / "txn") == []
    # the pool is reused by the next ingest (no new processes), and deduplication works through it
    before = list(pool.pids)
    again = procs.ingest_tar(io.BytesIO(tar), "/sw/grp/cid2", now=NOW + 1)
    assert workers._shared is pool and pool.pids == before
    assert again.stats.objects_written == 0
    verify(procs)


@pytest.mark.parametrize(
    ("algorithm", "kind"),
    [
        (Algorithm.SHA1, ObjectKind.FILE),
        (Algorithm.SHA1, ObjectKind.PARTIAL),
        (Algorithm.SHAKE128, ObjectKind.FILE),
    ],
)
def test_store_batch_writes_valid_objects(tmp_path: Path, algorithm: Algorithm, kind: ObjectKind) -> None:
    store = LocalStore(tmp_path / "s", create=True)
    contents = [b"", b"a", b"x" * 100_000, os.urandom(5000), b"a"]
    blob = b"".join(contents)
    digests, written, nbytes = objworker.store_batch(
        store,
        algorithm,
        Compression("zlib", 6).compressor(),
        kind,
        [len(c) for c in contents],
        blob,
    )
    assert written == 4 and len(digests) == 20 * len(contents)  # the second b"a" exists already
    for i, c in enumerate(contents):
        obj = make_object(c, algorithm)
        assert digests[20 * i : 20 * i + 20] == obj.hash.digest
        stored = store.get(obj.hash.object_name(kind))
        assert stored == obj.data and decompress(stored) == c
    assert nbytes == sum(len(make_object(c).data) for c in contents[:4])
    assert sorted(store.list_objects()) == sorted(
        {make_object(c, algorithm).hash.object_name(kind) for c in contents}
    )
    assert os.listdir(store.staging_dir()) == []  # no temp file left behind


def test_small_inputs_do_not_start_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    monkeypatch.delenv(workers.ENV_PROCESSES, raising=False)
    s0 = _repo(tmp_path / "r")
    s0.ingest_tar(io.BytesIO(make_tar(_entries(50), "none")), "/sw/grp/small")
    assert workers._shared is None
    verify(s0)


def test_a_second_concurrent_ingest_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always_processes: None
) -> None:
    first = workers.lease()
    assert first is not None
    try:
        assert workers.lease() is None  # taken: the caller uses threads instead
        s0 = _repo(tmp_path / "r")
        s0.ingest_tar(io.BytesIO(make_tar(_entries(100), "none")), "/sw/grp/cid")
        verify(s0)
    finally:
        workers.release(first)
    assert workers.lease() is first
    workers.release(first)


def test_a_worker_that_dies_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, always_processes: None
) -> None:
    s0 = _repo(tmp_path / "r")
    before = s0.manifest().revision
    tar = make_tar(_entries(), "none")

    def members() -> Iterator[Member]:
        for i, m in enumerate(iter_tar(io.BytesIO(tar))):
            if i == 200:
                pool = workers._shared
                assert pool is not None
                os.kill(pool.pids[0], signal.SIGKILL)
                time.sleep(0.2)
            yield m

    with pytest.raises(StorageError, match=r"worker process \(pid \d+\) died.*run the ingest again"):
        s0.ingest(members(), "/sw/grp/cid")
    assert s0.manifest().revision == before
    verify(s0)
    # the broken pool was dropped; the next ingest starts a new one and succeeds
    assert workers._shared is None
    s0.ingest_tar(io.BytesIO(tar), "/sw/grp/cid")
    verify(s0)


_INGEST = r"""
import sys
from pathlib import Path
from rcds.publish import objects
from rcds.publish.stratum0 import Stratum0
objects.POOL_MIN_FILES = 0
members = iter(())
s0 = Stratum0(Path(sys.argv[1]), sys.argv[2])
from rcds.publish.tarsource import iter_tar
import time
def slow():
    with open(sys.argv[3], "rb") as f:
        for i, m in enumerate(iter_tar(f)):
            if i == 100:
                print("workers", flush=True)
                time.sleep(60)  # killed here, with workers holding batches
            yield m
s0.ingest(slow(), "/sw/grp/killed")
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_ingest_process_stops_its_workers(tmp_path: Path) -> None:
    s0 = _repo(tmp_path / "r")
    tar = tmp_path / "in.tar"
    tar.write_bytes(make_tar(_entries(), "none"))
    env = dict(os.environ, **{workers.ENV_PROCESSES: "2"})
    proc = subprocess.Popen(
        [sys.executable, "-c", _INGEST, str(s0.layout.root), NAME, str(tar)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"workers\n"
        kids = _children(proc.pid)
        assert len(kids) == 2
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_running(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(k) for k in kids), "worker processes outlived their parent"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert s0.manifest().revision == 0
    verify(s0)


def test_workers_that_cannot_start_leave_the_work_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always_processes: None
) -> None:
    monkeypatch.setattr(workers, "WORKER_MODULE", "rcds.no_such_module")  # e.g. a broken installation
    monkeypatch.setattr(workers, "_disabled_until", 0.0)
    s0 = _repo(tmp_path / "r")
    s0.ingest_tar(io.BytesIO(make_tar(_entries(100), "none")), "/sw/grp/cid")
    verify(s0)
    assert workers._shared is None and workers.disabled_reason is not None
    assert workers.lease() is None  # not tried again for a while


def test_a_storage_error_in_a_worker_reaches_the_caller(tmp_path: Path, always_processes: None) -> None:
    s0 = _repo(tmp_path / "r")
    txn = s0.layout.public / "data" / "txn"
    txn.rmdir()  # every object write fails (as on a full or read-only disk)
    entries = [e for e in _entries() if not e.name.startswith("data/")]  # no chunked file: workers only
    with pytest.raises(StorageError, match=r"cannot write .*check free space and permissions"):
        s0.ingest_tar(io.BytesIO(make_tar(entries, "none")), "/sw/grp/cid")
    txn.mkdir()
    assert s0.manifest().revision == 0
    verify(s0)


def test_prestarted_workers_are_leased_once_ready_and_run_niced(
    monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    monkeypatch.setenv(workers.ENV_PROCESSES, "2")
    monkeypatch.setenv(workers.ENV_NICE, "3")
    workers.prestart()
    pool = workers._shared
    assert pool is not None and len(pool.pids) == 2
    workers.prestart()  # a second call starts nothing more
    assert workers._shared is pool
    leased = workers.lease()  # waits for the workers to say "ready"
    assert leased is pool and pool.ready() and workers.running()
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        for pid in pool.pids:  # the main thread gets a core before its workers do
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, own + 3)
    finally:
        workers.release(pool)


def test_worker_nice_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, fresh_pool: None) -> None:
    monkeypatch.setenv(workers.ENV_PROCESSES, "1")
    monkeypatch.setenv(workers.ENV_NICE, "0")
    pool = workers.lease()
    assert pool is not None
    try:
        assert os.getpriority(os.PRIO_PROCESS, pool.pids[0]) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        workers.release(pool)


def test_prestarted_workers_that_cannot_start_leave_the_work_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    monkeypatch.setenv(workers.ENV_PROCESSES, "2")
    monkeypatch.setattr(workers, "WORKER_MODULE", "rcds.no_such_module")
    monkeypatch.setattr(workers, "_disabled_until", 0.0)
    monkeypatch.setattr(objects, "POOL_MIN_BYTES", 1)  # the input below is big enough to prestart
    tar = tmp_path / "in.tar"
    tar.write_bytes(make_tar(_entries(100), "none"))
    s0 = _repo(tmp_path / "r")
    with tar.open("rb") as f:
        s0.ingest_tar(f, "/sw/grp/cid")
    verify(s0)
    assert workers._shared is None and workers.disabled_reason is not None
