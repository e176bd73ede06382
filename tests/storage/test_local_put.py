"""LocalStore.put_if_absent, the object-writing fast path of ingest (threads and worker processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rcds.errors import StorageError
from rcds.format.compression import make_object
from rcds.storage.local import LocalStore


def test_objects_are_written_once_without_leftovers(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", create=True)
    obj = make_object(b"some content\n" * 100)
    name = obj.hash.object_name()
    assert store.put_if_absent(name, memoryview(obj.data)) is True
    assert store.put_if_absent(name, b"never written") is False
    assert (tmp_path / "s" / name).read_bytes() == obj.data
    assert os.stat(tmp_path / "s" / name).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "s" / "data" / "txn") == []
    # root files keep their durable path (fsync), only written when absent
    assert store.put_if_absent(".cvmfswhitelist", b"w") is True
    assert store.put_if_absent(".cvmfswhitelist", b"x") is False
    assert store.get(".cvmfswhitelist") == b"w"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_failed_write_is_a_storage_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", create=True)
    obj = make_object(b"x")
    name = obj.hash.object_name()
    target_dir = tmp_path / "s" / name.rsplit("/", 1)[0]
    target_dir.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="check free space and permissions"):
            store.put_if_absent(name, obj.data)
    finally:
        target_dir.chmod(0o755)
    assert os.listdir(tmp_path / "s" / "data" / "txn") == []


def test_a_missing_txn_directory_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", create=True)
    os.rmdir(tmp_path / "s" / "data" / "txn")
    with pytest.raises(StorageError, match="cannot write"):
        store.put_if_absent(make_object(b"y").hash.object_name(), b"y")


def test_only_large_objects_start_their_writeback_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forcing each small object out to disk costs more system time than the commit's syncfs
    saves; large ones are started as they are stored."""
    from rcds.storage import local

    started: list[int] = []
    monkeypatch.setattr(local, "start_writeback", lambda fd: started.append(os.fstat(fd).st_size))
    store = LocalStore(tmp_path / "s", create=True)
    small = os.urandom(local.EARLY_WRITEBACK_MIN - 1)
    large = os.urandom(local.EARLY_WRITEBACK_MIN)
    for data in (small, large):
        store.put_if_absent(make_object(data).hash.object_name(), data)
    assert started == [len(large)]
