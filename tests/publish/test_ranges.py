"""A plain tar on disk is read by byte ranges: headers here, file data by the worker processes."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.errors import InputError
from rcds.format.chunker import ChunkParams
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.publish import objects, objworker, tarsource, workers
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.members import FileRange, Kind, file_identity
from rcds.publish.policy import Limits
from rcds.publish.stratum0 import Stratum0
from rcds.storage.local import LocalStore
from rcds.testing.hostile_tars import CASES

from testkit import NAME, SMALL_CHUNKS, Entry, make_tar, verify

NOW = 2_000_000_000


def _entries() -> list[Entry]:
    """Small files (PAX long names among them), duplicates, an empty file, links, a chunked file."""
    long_dir = "pkg/" + "d" * 120
    out = [Entry("pkg", kind="dir", mode=0o755), Entry(long_dir, kind="dir", mode=0o755)]
    for i in range(300):
        where = long_dir if i % 4 == 0 else "pkg"
        out.append(Entry(f"{where}/m{i}.py", (f"# module {i}\n" + f"v_{i} = {i}\n" * (i % 97)).encode()))
    out += [Entry(f"pkg/same{i}.txt", b"identical content\n") for i in range(4)]
    out += [Entry("pkg/empty", b""), Entry("pkg/link", kind="symlink", target="m1.py")]
    out += [Entry("pkg/hard", kind="hardlink", target="pkg/m2.py")]
    out.append(Entry("pkg/mid.bin", os.urandom(300 << 10)))  # over the batch limit: read here
    out.append(Entry("data/big.bin", os.urandom(700 << 10)))  # chunked
    return out


def _repo(root: Path) -> Stratum0:
    create_repository(root, Settings(name=NAME, **SMALL_CHUNKS))  # type: ignore[arg-type]
    return Stratum0(root, NAME)


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Worker processes for every small content from the first file on; stopped afterwards."""
    workers.shutdown()
    monkeypatch.setenv(workers.ENV_PROCESSES, "2")
    monkeypatch.setattr(objects, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(objects, "BATCH_FILES", 7)  # many batches in flight
    monkeypatch.setattr(objects, "RANGE_BATCH_FILES", 7)
    yield
    workers.shutdown()


def test_only_a_plain_tar_in_a_regular_file_is_read_by_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = make_tar([Entry("a.txt", b"hello\n")], "none")
    plain = tmp_path / "plain.tar"
    plain.write_bytes(tar)
    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress(tar))
    with open(plain, "rb") as f:
        found = tarsource.seekable_source(f)
        assert found is not None
        source, start, size = found
        assert (start, size) == (0, len(tar)) and os.path.samefile(source.path, plain)
        f.read(7)
        assert tarsource.seekable_source(f) is not None and tarsource.seekable_source(f)[1] == 7  # type: ignore[index]
    with open(tmp_path / "packed.tar.gz", "rb") as f:
        assert tarsource.seekable_source(f) is None  # compressed: streamed
    assert tarsource.seekable_source(io.BytesIO(tar)) is None
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pr, os.fdopen(w, "wb"):
        assert tarsource.seekable_source(pr) is None
    monkeypatch.setenv(tarsource.ENV_RANGES, "0")
    with open(plain, "rb") as f:
        assert tarsource.seekable_source(f) is None


def test_an_unlinked_file_is_reached_through_proc(tmp_path: Path) -> None:
    plain = tmp_path / "gone.tar"
    plain.write_bytes(make_tar([Entry("a.txt", b"hello\n")], "none"))
    with open(plain, "rb") as f:
        plain.unlink()
        found = tarsource.seekable_source(f)
        assert found is not None and found[0].path == f"/proc/{os.getpid()}/fd/{f.fileno()}"
        assert os.stat(found[0].path).st_ino == os.fstat(f.fileno()).st_ino


def test_ranges_yield_what_the_stream_yields(tmp_path: Path) -> None:
    tar = make_tar(_entries(), "none")
    path = tmp_path / "in.tar"
    path.write_bytes(tar)
    streamed = [(m, m.read(m.size + 1) if m.read else None) for m in tarsource.iter_tar(io.BytesIO(tar))]
    with open(path, "rb") as f:
        ranged = list(tarsource.iter_tar(f))
        assert len(ranged) == len(streamed)
        for m, (s, data) in zip(ranged, streamed, strict=True):
            assert (m.path, m.kind, m.mode, m.mtime, m.size, m.target) == (
                s.path,
                s.kind,
                s.mode,
                s.mtime,
                s.size,
                s.target,
            )
            if m.kind is Kind.FILE:
                assert type(m.read) is FileRange
                assert tar[m.read.offset : m.read.offset + m.size] == data
                assert m.read(m.size + 1) == data and m.read(1) == b""  # pread, the file offset untouched
        assert f.tell() == 0


def test_ingest_by_ranges_stores_exactly_what_the_stream_stores(
    tmp_path: Path, processes: None, view_factory
) -> None:
    tar = make_tar(_entries(), "none")
    path = tmp_path / "in.tar"
    path.write_bytes(tar)
    streamed = _repo(tmp_path / "streamed")
    streamed.ingest_tar(io.BytesIO(tar), "/sw/grp/cid", now=NOW)
    ranged = _repo(tmp_path / "ranged")
    sent: list[objworker.Batch] = []
    real_submit = workers.WorkerPool.submit

    def spy(pool: workers.WorkerPool, batch: objworker.Batch) -> None:
        sent.append(batch)
        real_submit(pool, batch)

    with open(path, "rb") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(workers.WorkerPool, "submit", spy)
        result = ranged.ingest_tar(f, "/sw/grp/cid", now=NOW)
    assert sent and all(b.source is not None and b.items == [] for b in sent[:-1])  # no data in the pipe
    assert sum(b.count for b in sent if b.source is not None) >= 300
    want = {n: streamed.store.get(n) for n in streamed.store.list_objects() if n[-1] not in "CHXM"}
    got = {n: ranged.store.get(n) for n in ranged.store.list_objects() if n[-1] not in "CHXM"}
    assert got == want
    v1, v2 = view_factory(streamed), view_factory(ranged)
    assert list(v2.walk("/sw/grp/cid")) == list(v1.walk("/sw/grp/cid"))
    assert v2.read("/sw/grp/cid/pkg/hard") == v1.read("/sw/grp/cid/pkg/m2.py")
    assert v2.read("/sw/grp/cid/data/big.bin") == v1.read("/sw/grp/cid/data/big.bin")
    assert result.stats.files == 300 + 4 + 1 + 2 + 1  # the marker file too
    verify(ranged)
    assert os.listdir(ranged.layout.public / "data" / "txn") == []
    with open(path, "rb") as f:
        again = ranged.ingest_tar(f, "/sw/grp/cid2", now=NOW + 1)
    assert again.stats.objects_written == 0  # every content deduplicated (catalogs are not counted)
    verify(ranged)


@pytest.mark.parametrize("chunks", [{}, SMALL_CHUNKS], ids=["default-chunks", "small-chunks"])
def test_a_file_the_chunker_cuts_is_never_a_range(
    tmp_path: Path, processes: None, view_factory, chunks: dict[str, int]
) -> None:
    """Small files are byte ranges for the workers; a file over the chunk minimum is read and
    chunked in the ingest process, as when streamed, even when it is small enough for a batch
    (here 100 KiB with a 64 KiB chunk minimum: it was stored whole by range, chunked when
    streamed, so the same tar gave different objects by route)."""
    entries = [Entry(f"pkg/s{i}.py", f"# {i}\n".encode() * (i + 1)) for i in range(20)]
    entries.append(Entry("lib/big.so", os.urandom(1 << 20)))
    entries.append(Entry("pkg/mid.dat", os.urandom(100 << 10)))
    tar = make_tar(entries, "none")
    path = tmp_path / "in.tar"
    path.write_bytes(tar)

    def repo(root: Path) -> Stratum0:
        create_repository(root, Settings(name=NAME, **chunks))  # type: ignore[arg-type]
        return Stratum0(root, NAME)

    streamed = repo(tmp_path / "streamed")
    streamed.ingest_tar(io.BytesIO(tar), "/sw/grp/cid", now=NOW)
    ranged = repo(tmp_path / "ranged")
    sizes: list[int] = []
    real_submit = workers.WorkerPool.submit

    def spy(pool: workers.WorkerPool, batch: objworker.Batch) -> None:
        if batch.source is not None:
            sizes.extend(batch.sizes)
        real_submit(pool, batch)

    with open(path, "rb") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(workers.WorkerPool, "submit", spy)
        ranged.ingest_tar(f, "/sw/grp/cid", now=NOW)
    assert 1 << 20 not in sizes  # over the batch limit: never a range
    assert (100 << 10 in sizes) is not bool(chunks)  # a range unless the chunker cuts it
    assert len(sizes) >= 20  # the small files went by range
    want = {n: streamed.store.get(n) for n in streamed.store.list_objects() if n[-1] not in "CHXM"}
    got = {n: ranged.store.get(n) for n in ranged.store.list_objects() if n[-1] not in "CHXM"}
    assert got == want
    v1, v2 = view_factory(streamed), view_factory(ranged)
    assert list(v2.walk("/sw/grp/cid")) == list(v1.walk("/sw/grp/cid"))
    assert v2.read("/sw/grp/cid/pkg/mid.dat") == entries[-1].data
    verify(ranged)


@pytest.mark.parametrize("case", [c for c in CASES if c.compression == "none"], ids=lambda c: c.name)
def test_hostile_tarballs_on_disk(tmp_path: Path, processes: None, view_factory, case) -> None:
    repo = _repo(tmp_path / "repo")
    before = repo.store.get(".cvmfspublished")
    path = tmp_path / "in.tar"
    path.write_bytes(case.build())
    limits = Limits(max_bytes=case.max_bytes) if case.max_bytes else Limits()
    with open(path, "rb") as f:
        if case.policy == "reject":
            with pytest.raises(InputError) as info:
                repo.ingest_tar(f, "/sw/grp/cid", limits=limits)
            if case.member is not None:
                assert case.member in str(info.value)
            assert repo.store.get(".cvmfspublished") == before
            assert verify(repo).revision == 0
            return
        repo.ingest_tar(f, "/sw/grp/cid", limits=limits)
    v = view_factory(repo)
    for rel, want in (case.sanitized or {}).items():
        assert v.lookup(f"/sw/grp/cid/{rel}").size == want.size or want.type != "file", rel
    verify(repo)


def test_the_byte_limit_holds_for_ranges(tmp_path: Path, processes: None) -> None:
    repo = _repo(tmp_path / "repo")
    path = tmp_path / "in.tar"
    path.write_bytes(make_tar([Entry(f"f{i}", os.urandom(4000)) for i in range(20)], "none"))
    with open(path, "rb") as f, pytest.raises(InputError, match="more than the limit of 40000 bytes"):
        repo.ingest_tar(f, "/sw/grp/cid", limits=Limits(max_bytes=40_000))
    assert verify(repo).revision == 0


def test_a_worker_refuses_a_replaced_or_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "in.tar"
    path.write_bytes(b"x" * 10_000)
    ident = file_identity(os.stat(path))
    views = objworker.read_ranges((str(path), ident, [0, 600, 5000]), [100, 200, 5000])
    assert [bytes(v) for v in views] == [b"x" * 100, b"x" * 200, b"x" * 5000]
    with pytest.raises(InputError, match="ends before byte 10001"):
        objworker.read_ranges((str(path), ident, [0, 5000]), [100, 5001])
    far = (str(path), ident, [0, 9000])
    assert [len(v) for v in objworker.read_ranges(far, [10, 1000])] == [10, 1000]
    with pytest.MonkeyPatch.context() as mp:  # one pread per range when the span is large
        mp.setattr(objworker, "SPAN_SLACK", 0)
        assert [len(v) for v in objworker.read_ranges(far, [10, 1000])] == [10, 1000]
        with pytest.raises(InputError, match="ends before byte 10001"):
            objworker.read_ranges((str(path), ident, [0, 9001]), [10, 1000])
    os.truncate(path, 9500)
    with pytest.raises(InputError, match="replaced or written to during the ingest"):
        objworker.read_ranges(far, [10, 1000])
    path.write_bytes(b"x" * 10_000)  # the same size again, a new modification time
    os.utime(path, ns=(1, 1))
    with pytest.raises(InputError, match="replaced or written to during the ingest"):
        objworker.read_ranges(far, [10, 1000])
    ident = file_identity(os.stat(path))
    with open(path, "rb"):  # held open: the new file cannot reuse its inode number
        (tmp_path / "other").write_bytes(b"x" * 10_000)
        os.utime(tmp_path / "other", ns=(1, 1))
        os.replace(tmp_path / "other", path)  # another file under the same name, same size and time
        with pytest.raises(InputError, match="replaced or written to during the ingest"):
            objworker.read_ranges((str(path), ident, [0]), [100])
    with pytest.raises(InputError, match="cannot open the archive"):
        objworker.read_ranges((str(tmp_path / "nothing"), ident, [0]), [1])


def test_a_file_cut_during_the_ingest_fails_it_cleanly(tmp_path: Path, processes: None) -> None:
    repo = _repo(tmp_path / "repo")
    path = tmp_path / "in.tar"
    path.write_bytes(make_tar([Entry(f"f{i}", os.urandom(4000)) for i in range(50)], "none"))
    with open(path, "rb") as f:
        members = tarsource.iter_tar(f)
        first = next(members)
        os.truncate(path, 20_000)  # after its headers were read by the parser
        with pytest.raises(InputError, match=r"truncated|written to during the ingest"):
            repo.ingest(_chain([first], members), "/sw/grp/cid", now=NOW)
    assert verify(repo).revision == 0


def _chain(head: list, rest: Iterator) -> Iterator:  # type: ignore[type-arg]
    yield from head
    yield from rest


def test_gnu_long_names_and_their_data_by_ranges(tmp_path: Path) -> None:
    buf = io.BytesIO()
    contents = {("x" * 150 + f"/f{i}"): os.urandom(1000 + i) for i in range(3)}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in contents.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path = tmp_path / "gnu.tar"
    path.write_bytes(buf.getvalue())
    with open(path, "rb") as f:
        got = {m.path: m.read(m.size) for m in tarsource.iter_tar(f) if m.read is not None}
    assert got == contents


def test_ranges_behind_a_chunked_file_complete_as_their_batches_return(
    tmp_path: Path, processes: None
) -> None:
    """Files queued behind a chunked file (stored on threads) complete once it and their batches
    are done, at the next file added: callbacks and answered batches do not pile up to the end."""
    small = [Entry(f"s{i}.py", f"# {i}\n".encode() * 50) for i in range(40)]
    tar = make_tar([Entry("big.bin", os.urandom(700 << 10)), *small], "none")
    path = tmp_path / "in.tar"
    path.write_bytes(tar)
    store = LocalStore(tmp_path / "store", create=True)
    writer = objects.ContentWriter(
        store, chunking=ChunkParams(64 << 10, 128 << 10, 256 << 10), processes=True
    )
    done: list[str] = []
    release = threading.Event()
    real_store = writer._store

    def slow_store(data: bytes, kind: ObjectKind) -> ContentHash:
        release.wait(30)  # the chunked file's pieces finish only once the small files are queued
        return real_store(data, kind)

    writer._store = slow_store  # type: ignore[method-assign]
    try:
        with open(path, "rb") as f:
            members = [m for m in tarsource.iter_tar(f) if m.kind is Kind.FILE]
            for m in members[:-1]:
                assert m.read is not None
                writer.add_stream(m.read, m.size, lambda c, name=m.path: done.append(name), m.path)
            assert done == []
            release.set()
            for _, _, fut in writer._files[0].parts:  # the chunked file's pieces, on threads
                fut.result()
            writer.flush()
            assert writer._pool is not None
            writer._pool.settle()  # every batch answered; nothing has run the callbacks since
            assert done == []
            last = members[-1]
            assert last.read is not None
            writer.add_stream(last.read, last.size, lambda c: done.append(last.path), last.path)
            assert done == [m.path for m in members[:-1]]  # all but the file just added
            writer.drain(wait=True)
            assert done == [m.path for m in members]
    finally:
        writer.close()
