"""Publishing while the upload arrives: the revision only after the CID is verified, nothing
visible after a cut-off or mismatching upload, and a live job gives way to queued uploads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.errors import InputError
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.service.live import GaveWayError, LiveFeed
from rcds.service.runner import ServiceThread
from rcds.service.spool import Spooled

import servicekit as kit

REPOS = ("user1.example.org", "user2.example.org")


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[ServiceThread]:
    cfg = kit.config(tmp_path / "svc", repositories=REPOS, tables="[stamps]\nflush_interval = 3600")
    with ServiceThread(cfg) as st:
        yield st


def _big_tar(seed: str) -> bytes:
    """An uncompressed tarball of ~6 MB in several files (a chunked one among them)."""
    files = {
        f"lib/part{i}.bin": (seed.encode() + bytes([i])) * (300_000 // (len(seed) + 1)) for i in range(8)
    }
    files["lib/big.bin"] = bytes(range(256)) * 16000 + seed.encode()
    return kit.tarball(files, seed=seed, compression="none")


def _objects(svc: ServiceThread, name: str) -> set[str]:
    slot = next(s for s in svc.service.slots if s.name == name)
    return set(slot.s0.store.list_objects())


# -- the feed on its own -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_reader_follows_the_file_and_ends_when_the_upload_is_done(tmp_path: Path) -> None:
    path = tmp_path / "up.part"
    out = path.open("wb")
    feed = LiveFeed(path)
    reader = feed.reader(lambda: False)
    got = bytearray()

    def read_all() -> None:
        buf = bytearray(1000)
        while n := reader.readinto(buf):
            got.extend(buf[:n])

    t = threading.Thread(target=read_all)
    t.start()
    for i in range(5):
        out.write(bytes([i]) * 3000)
        out.flush()
        feed.grew((i + 1) * 3000)
        time.sleep(0.02)
    assert t.is_alive()  # waits for more: the upload is not complete
    feed.verified()
    t.join(5)
    assert not t.is_alive()
    assert bytes(got) == b"".join(bytes([i]) * 3000 for i in range(5))
    feed.wait_verified(lambda: False)  # returns at once
    assert feed.done("item") is True  # the worker has the job
    assert feed.wait_done() == "item"
    reader.close()
    out.close()


@pytest.mark.timeout(30)
def test_reader_fails_on_abort_and_gives_way_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "up.part"
    path.write_bytes(b"x" * 10)
    feed = LiveFeed(path)
    feed.grew(10)
    reader = feed.reader(lambda: False)
    assert reader.readinto(bytearray(100)) == 10
    feed.aborted()
    with pytest.raises(InputError, match="interrupted"):
        reader.readinto(bytearray(100))
    with pytest.raises(InputError, match="does not match"):
        feed.wait_verified(lambda: False)
    assert feed.was_aborted and feed.wait_done() is None
    reader.close()

    feed = LiveFeed(path)
    asked = threading.Event()
    reader = feed.reader(asked.is_set)
    threading.Timer(0.2, asked.set).start()
    with pytest.raises(GaveWayError):
        reader.readinto(bytearray(100))
    assert feed.done("item") is False  # the worker gave it back: the handler queues it
    reader.close()


@pytest.mark.timeout(30)
def test_reader_finds_an_upload_completed_before_the_worker_came(tmp_path: Path) -> None:
    part, final = tmp_path / "up.part", tmp_path / "queue.tar"
    part.write_bytes(b"all of it")
    feed = LiveFeed(part)
    feed.grew(9)
    feed.verified()
    part.rename(final)
    threading.Timer(0.2, feed.done, args=(Spooled("dune/x", final, 9),)).start()
    reader = feed.reader(lambda: False)  # waits for the handler to say where the file went
    buf = bytearray(100)
    assert reader.readinto(buf) == 9 and bytes(buf[:9]) == b"all of it"
    assert reader.readinto(buf) == 0
    reader.close()


@pytest.mark.timeout(30)
def test_an_upload_that_stops_moving_is_given_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rcds.service.live.STALL_SECONDS", 0.3)
    path = tmp_path / "up.part"
    path.write_bytes(b"")
    feed = LiveFeed(path)
    reader = feed.reader(lambda: False)  # nobody else waits: only the stall ends the wait
    with pytest.raises(GaveWayError):
        reader.readinto(bytearray(10))
    reader.close()
    feed = LiveFeed(path)
    assert feed.wait_done() is None  # a worker after a refused tarball stops waiting too
    assert feed.done("item") is False  # and the handler, if it ever completes, queues the upload


# -- through the service -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_live_upload_is_published_and_only_after_it_is_complete(svc: ServiceThread) -> None:
    data = _big_tar("live")
    cid = kit.cid_of(data)
    before = kit.revisions(svc)
    s = kit.start_upload(svc.url, cid, len(data))
    s.sendall(data[: len(data) - 1])
    incoming = svc.service.config.spool_dir / "incoming"
    assert kit.wait_until(lambda: any(incoming.iterdir()))
    time.sleep(0.5)  # time enough to ingest all but the last byte
    assert kit.revisions(svc) == before  # nothing visible while the upload is incomplete
    api = kit.Api(svc.url)
    assert "PRESENT" not in api.get("exists", cid).text
    s.sendall(data[-1:])
    assert kit.read_until_closed(s).endswith(b"\r\n\r\nOK\n")
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    rec = next(r for r in svc.service.queue.records if r.cid == cid)
    assert rec.live
    assert kit.wait_until(lambda: kit.spool_files(svc.service.config.spool_dir) == [], timeout=10)
    assert sum(kit.revisions(svc).values()) == sum(before.values()) + 1
    api.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["mismatch", "cut-off"])
def test_live_upload_that_fails_leaves_nothing_visible(svc: ServiceThread, how: str) -> None:
    data = _big_tar(how)
    cid = kit.cid_of(data)
    wrong = kit.cid_of(data + b"other") if how == "mismatch" else cid
    before = kit.revisions(svc)
    objects_before = {name: _objects(svc, name) for name in REPOS}
    s = kit.start_upload(svc.url, wrong, len(data))
    s.sendall(data[:-100])
    time.sleep(0.5)  # the live ingest has read all it can
    if how == "mismatch":
        s.sendall(data[-100:])
        answer = kit.read_until_closed(s)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"does not match cid" in answer
    else:
        s.close()
    api = kit.Api(svc.url)
    assert kit.wait_until(lambda: api.get("status", wrong).status == 404, timeout=10)  # claim released
    assert kit.wait_until(lambda: kit.spool_files(svc.service.config.spool_dir) == [], timeout=10)
    assert kit.wait_until(lambda: svc.service.queue.idle(0.1), timeout=10)
    assert kit.revisions(svc) == before
    assert "PRESENT" not in api.get("exists", wrong).text
    # the aborted ingest wrote objects, all of them garbage: gc removes them
    assert any(_objects(svc, name) - objects_before[name] for name in REPOS)
    for slot in svc.service.slots:
        with slot.lock:
            slot.s0.gc()
        assert _objects(svc, slot.name) <= objects_before[slot.name]
        assert slot.s0.manifest().revision == before[slot.name]
    # the right upload works afterwards
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    api.close()


@pytest.mark.timeout(90)
def test_live_jobs_give_way_to_a_queued_upload(svc: ServiceThread) -> None:
    slow = [_big_tar(f"slow{i}") for i in range(2)]
    sockets = []
    for data in slow:  # one live job per repository, both waiting for data
        s = kit.start_upload(svc.url, kit.cid_of(data), len(data))
        s.sendall(data[:1000])
        sockets.append(s)
    assert kit.wait_until(lambda: not svc.service.queue._idle, timeout=5)  # both workers took one
    time.sleep(0.3)
    quick = kit.tarball(seed="quick")
    api = kit.Api(svc.url)
    t0 = time.monotonic()
    assert api.publish(kit.cid_of(quick), quick).text == "OK\n"
    assert api.wait_status(kit.cid_of(quick), timeout=20).text.startswith("PUBLISHED:")
    assert time.monotonic() - t0 < 15  # not held until the slow uploads end
    for s, data in zip(sockets, slow, strict=True):
        s.sendall(data[1000:])
        assert kit.read_until_closed(s).endswith(b"\r\n\r\nOK\n")
    for data in slow:
        assert api.wait_status(kit.cid_of(data)).text.startswith("PUBLISHED:")
    recs = {r.cid: r for r in svc.service.queue.records}
    # one of them gave way (queued when complete); the other went on once the queue was empty
    assert [recs[kit.cid_of(d)].live for d in slow].count(False) >= 1
    assert kit.wait_until(lambda: kit.spool_files(svc.service.config.spool_dir) == [], timeout=10)
    api.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", ["gz", "none"])
def test_giving_way_inside_the_stream_stops_the_ingest_and_changes_nothing(
    tmp_path: Path, compression: str
) -> None:
    root = tmp_path / "repo"
    create_repository(root, Settings(name="r.example.org", compression="isal:2"), now=1_700_000_000)
    s0 = Stratum0(root, "r.example.org")
    data = kit.tarball({f"f{i}.bin": bytes([i]) * 400_000 for i in range(20)}, compression=compression)
    path = tmp_path / "up.part"
    path.write_bytes(data[: len(data) // 2])
    feed = LiveFeed(path)
    feed.grew(len(data) // 2)
    asked = threading.Event()
    threading.Timer(0.3, asked.set).start()
    threads = threading.active_count()
    before = s0.manifest().revision
    reader = feed.reader(asked.is_set)
    with pytest.raises(GaveWayError):
        s0.ingest_tar(reader, "/sw/x")  # type: ignore[arg-type]
    reader.close()
    assert threading.active_count() <= threads  # the inflating thread (gzip) has ended
    assert s0.manifest().revision == before
    assert feed.done("item") is False
