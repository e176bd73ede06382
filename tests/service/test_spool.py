"""The spool: temp file, fsync, rename; limits; no leftovers; uploads survive a restart."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from rcds.errors import InputError
from rcds.service import spool as spool_mod
from rcds.service.runner import ServiceThread
from rcds.service.spool import NoSpaceError, Spool, TooLargeError, cid_filename
from rcds.service.status import State, StatusBook

import servicekit as kit


def files(sp: Spool) -> list[str]:
    return [str(p.relative_to(sp.root)) for p in sp.files()]


@pytest.mark.timeout(30)
def test_upload_is_renamed_into_the_queue_after_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = Spool(tmp_path / "spool", 1 << 20)
    data = b"tarball bytes" * 1000
    cid = "dune/" + hashlib.sha256(data).hexdigest()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_mod.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    up = sp.start(cid, len(data))
    assert [p.parent.name for p in sp.files()] == ["incoming"]
    for i in range(0, len(data), 4096):
        up.write(data[i : i + 4096])
    assert not synced
    item = up.commit()
    assert synced
    assert files(sp) == [f"queue/dune%2F{hashlib.sha256(data).hexdigest()}.tar"]
    assert item.path.read_bytes() == data and item.size == len(data) and item.cid == cid
    assert sp.pending() == [item]
    sp.discard(item)
    assert files(sp) == []


@pytest.mark.timeout(30)
def test_refusals_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Spool(tmp_path / "spool", 1000)
    with pytest.raises(TooLargeError, match="upload of 1001 bytes exceeds the maximum of 1000 bytes"):
        sp.start("dune/x", 1001)
    assert files(sp) == []
    up = sp.start("dune/x", None)  # no length given: the limit applies while streaming
    up.write(b"x" * 600)
    with pytest.raises(TooLargeError, match="exceeds the maximum of 1000 bytes"):
        up.write(b"x" * 600)
    up.abort()
    assert files(sp) == []
    # a content hash that does not match the CID
    up = sp.start("dune/" + "0" * 64, None)
    up.write(b"other content")
    with pytest.raises(InputError, match="does not match cid"):
        up.commit()
    assert files(sp) == []
    # the disk is short: refused up front from the length, and when a write fails
    monkeypatch.setattr(spool_mod, "DISK_RESERVE", 1 << 62)
    with pytest.raises(NoSpaceError, match="MiB free"):
        sp.start("dune/x", 10)
    assert files(sp) == []
    monkeypatch.setattr(spool_mod, "DISK_RESERVE", 0)
    up = sp.start("dune/x", None)

    class Full:
        def write(self, _: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    up._f = Full()  # type: ignore[assignment]
    with pytest.raises(NoSpaceError, match="No space left on device"):
        up.write(b"data")
    up.abort()
    assert files(sp) == []


@pytest.mark.timeout(30)
def test_file_names_round_trip(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool", 1 << 20)
    cids = ["dune/" + "@" * 235, "a=b", "x.y-z_w", "g/h"]
    for cid in cids:
        up = sp.start(cid, None)
        up.write(cid.encode())
        up.commit()
        assert len(cid_filename(cid, ".json")) <= 255
    assert sorted(i.cid for i in sp.pending()) == sorted(cids)
    assert sp.clean_incoming() == 0
    (sp.incoming / "leftover.part").write_bytes(b"x")
    assert sp.clean_incoming() == 1


@pytest.mark.timeout(30)
def test_failures_survive_a_restart(tmp_path: Path) -> None:
    book = StatusBook(tmp_path / "failed")
    assert book.claim("dune/a")
    assert not book.claim("dune/a")  # already receiving
    book.set("dune/a", State.FAILED, "r1", "member 'x': bad")
    again = StatusBook(tmp_path / "failed")
    st = again.get("dune/a")
    assert st is not None and st.state is State.FAILED and st.reason == "member 'x': bad"
    assert again.claim("dune/a")  # a failed CID can be uploaded again; the record goes
    assert StatusBook(tmp_path / "failed").get("dune/a") is None


@pytest.mark.timeout(60)
def test_queued_upload_survives_a_restart(tmp_path: Path) -> None:
    cfg = kit.config(tmp_path / "srv")
    data = kit.tarball(seed="restart")
    cid = kit.cid_of(data)
    with ServiceThread(cfg) as st:
        for s in st.service.slots:
            s.cleaning = True  # nobody takes the job
        api = kit.Api(st.url)
        assert api.publish(cid, data).text == "OK\n"
        assert api.get("status", cid).text == "QUEUED\n"
        api.close()
    assert kit.spool_files(cfg.spool_dir) == [f"queue/{cid_filename(cid, '.tar')}"]
    (cfg.spool_dir / "incoming" / "crashed.part").write_bytes(b"half an upload")
    with ServiceThread(cfg) as st:
        api = kit.Api(st.url)
        assert api.wait_status(cid).text.startswith("PUBLISHED:")
        assert api.get("exists", cid).text.startswith("PRESENT:")
        assert kit.wait_until(lambda: kit.spool_files(cfg.spool_dir) == [])
        api.close()


@pytest.mark.timeout(60)
def test_file_put_into_the_queue_is_published_at_start(tmp_path: Path) -> None:
    cfg = kit.config(tmp_path / "srv")
    with ServiceThread(cfg):
        pass
    data = kit.tarball(seed="dropped in")
    cid = kit.cid_of(data)
    (cfg.spool_dir / "queue" / cid_filename(cid, ".tar")).write_bytes(data)
    bad = "dune/dropped-in-garbage"
    (cfg.spool_dir / "queue" / cid_filename(bad, ".tar")).write_bytes(b"garbage" * 100)
    with ServiceThread(cfg) as st:
        api = kit.Api(st.url)
        assert api.wait_status(cid).text.startswith("PUBLISHED:")
        assert api.wait_status(bad).text.startswith("FAILED:")
        api.close()
    with ServiceThread(cfg) as st:  # the failure is remembered across restarts
        api = kit.Api(st.url)
        assert api.get("status", bad).text.startswith("FAILED:")
        assert api.get("status", cid).text.startswith("PUBLISHED:")
        api.close()
    assert kit.spool_files(cfg.spool_dir) == []


@pytest.mark.timeout(60)
def test_disk_short_through_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = kit.config(tmp_path / "srv")
    with ServiceThread(cfg) as st:
        monkeypatch.setattr(spool_mod, "DISK_RESERVE", 1 << 62)
        api = kit.Api(st.url)
        data = kit.tarball(seed="no space")
        r = api.publish(kit.cid_of(data), data)
        assert r.status == 507 and "MiB free" in r.text and r.text.count("\n") == 1
        assert api.get("status", kit.cid_of(data)).status == 404
        monkeypatch.setattr(spool_mod, "DISK_RESERVE", 0)
        api.publish_and_wait(data)
        api.close()
    assert kit.spool_files(cfg.spool_dir) == []
