"""The contract every storage backend must keep, run against each backend.

To add a backend, add a :class:`Backend` to ``BACKENDS``: how to make an empty store in a temp
directory, and how to fake the debris an interrupted writer and a stray file leave behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rcds.errors import InputError, NotFoundError
from rcds.format.compression import make_object
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.storage.base import Store
from rcds.storage.local import LocalStore
from rcds.storage.locate import open_store
from rcds.storage.names import ROOT_FILES, check_name, is_object_name
from rcds.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Backend:
    """How the contract tests drive one backend."""

    name: str
    make: Callable[[Path, pytest.FixtureRequest], Store]
    #: simulate a writer that died mid-put: a temp file that must never show up as an object
    leave_temp: Callable[[Store, bytes], None]
    #: put a file that is not an object (bad name) where objects live
    plant_junk: Callable[[Store, str], None]
    #: a file on the same filesystem as the store for put_file
    scratch_dir: Callable[[Store, Path], Path]


def _local_make(root: Path, request: pytest.FixtureRequest) -> Store:
    return LocalStore(root / "store", create=True)


def _local_leave_temp(store: Store, data: bytes) -> None:
    assert isinstance(store, LocalStore)
    store.temp_path().write_bytes(data)


def _local_plant_junk(store: Store, rel: str) -> None:
    assert isinstance(store, LocalStore)
    path = store.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"junk")


def _local_scratch(store: Store, tmp: Path) -> Path:
    return tmp


def _s3_make(root: Path, request: pytest.FixtureRequest) -> Store:
    store = open_store(request.getfixturevalue("s3_url"))
    request.addfinalizer(store.close)
    return store


def _s3_leave_temp(store: Store, data: bytes) -> None:
    """A writer that died mid-upload: a multipart upload with one part, never completed."""
    assert isinstance(store, S3Store)
    c, bucket = store._client, store.loc.bucket
    key = store.loc.key(ContentHash.of(data + os.urandom(8)).object_name())
    upload = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)


def _s3_plant_junk(store: Store, rel: str) -> None:
    assert isinstance(store, S3Store)
    store._client.put_object(Bucket=store.loc.bucket, Key=store.loc.key(rel), Body=b"junk")


BACKENDS = [
    Backend("local", _local_make, _local_leave_temp, _local_plant_junk, _local_scratch),
    Backend("s3", _s3_make, _s3_leave_temp, _s3_plant_junk, _local_scratch),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def store(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    return backend.make(tmp_path, request)


def _objects(n: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    kinds = list(ObjectKind)
    algos = list(Algorithm)
    for i in range(n):
        obj = make_object(f"object {i}".encode() * (i + 1), algos[i % len(algos)])
        out[obj.hash.object_name(kinds[i % len(kinds)])] = obj.data
    return out


# -- basic operations ---------------------------------------------------------------------------


def test_put_get_has_size_delete_object(store: Store) -> None:
    obj = make_object(b"hello\n")
    name = obj.hash.object_name()
    assert name == "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3"
    assert not store.has(name)
    store.put(name, obj.data)
    assert store.has(name)
    assert store.get(name) == obj.data
    assert store.size(name) == len(obj.data)
    with store.open(name) as f:
        assert f.read() == obj.data
    assert list(store.list_objects()) == [name]
    assert store.delete(name) is True
    assert not store.has(name)
    assert store.delete(name) is False
    assert list(store.list_objects()) == []


@pytest.mark.parametrize("name", sorted(ROOT_FILES))
def test_root_files(store: Store, name: str) -> None:
    assert not store.has(name)
    store.put(name, b"first")
    assert store.get(name) == b"first"
    store.put(name, b"second, longer")
    assert store.get(name) == b"second, longer"
    assert store.size(name) == 14
    assert list(store.list_objects()) == []  # root files are not objects
    assert store.delete(name)
    assert not store.has(name)


def test_empty_and_binary_content(store: Store) -> None:
    store.put(".cvmfs_status.json", b"")
    assert store.get(".cvmfs_status.json") == b""
    assert store.size(".cvmfs_status.json") == 0
    blob = bytes(range(256)) * 4000
    name = ContentHash.of(blob).object_name()
    store.put(name, blob)
    assert store.get(name) == blob


def test_list_objects(store: Store) -> None:
    objs = _objects(40)
    for name, data in objs.items():
        store.put(name, data)
    store.put(".cvmfspublished", b"manifest")
    store.put(".cvmfswhitelist", b"whitelist")
    listed = list(store.list_objects())
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(objs)
    assert all(is_object_name(n) for n in listed)
    for name, data in objs.items():
        assert store.get(name) == data
        assert store.size(name) == len(data)
    victim = sorted(objs)[3]
    store.delete(victim)
    assert sorted(store.list_objects()) == sorted(set(objs) - {victim})


def test_put_replaces(store: Store) -> None:
    name = "data/ab/" + "cd" * 19 + "C"
    store.put(name, b"a" * 1000)
    store.put(name, b"b")
    assert store.get(name) == b"b"
    assert store.size(name) == 1
    assert list(store.list_objects()) == [name]


def test_put_file_moves_a_complete_file(backend: Backend, store: Store, tmp_path: Path) -> None:
    src = backend.scratch_dir(store, tmp_path) / "complete"
    src.write_bytes(b"payload")
    name = ContentHash.of(b"payload").object_name(ObjectKind.PARTIAL)
    store.put_file(name, src)
    assert store.get(name) == b"payload"
    assert not src.exists()
    assert list(store.list_objects()) == [name]


def test_sync_is_callable(store: Store) -> None:
    store.put(".cvmfspublished", b"x")
    store.sync()
    assert store.get(".cvmfspublished") == b"x"


# -- errors -------------------------------------------------------------------------------------


def test_not_found_errors_name_the_file(store: Store) -> None:
    name = "data/00/" + "11" * 19
    for op in (store.get, store.size, store.open):
        with pytest.raises(NotFoundError) as exc:
            op(name)
        assert name in str(exc.value)
    with pytest.raises(NotFoundError, match=r"\.cvmfspublished"):
        store.get(".cvmfspublished")
    assert store.delete(name) is False
    assert store.has(name) is False


BAD_NAMES = [
    "../x",
    "../.cvmfspublished",
    "data/../../etc/passwd",
    "data/zz/" + "0" * 38,
    "data/AB/" + "0" * 38,
    "data/ab/" + "0" * 37,
    "data/ab/" + "0" * 38 + "Z",
    "data/ab/" + "0" * 38 + "/x",
    "data/ab/../" + "0" * 38,
    "data/txn/tmp.1",
    "data/ab",
    "data",
    "foo",
    "",
    ".",
    "/.cvmfspublished",
    "/data/ab/" + "0" * 38,
    "/etc/passwd",
    "./.cvmfspublished",
    ".cvmfspublished/",
    ".cvmfspublished\x00",
    ".cvmfsalt-" + "0" * 40 + "C",
    ".cvmfsfoo",
    "repo.json",
    "keys/test.example.org.key",
]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_strict_names(store: Store, bad: str) -> None:
    with pytest.raises(InputError):
        check_name(bad)
    with pytest.raises(InputError):
        store.put(bad, b"x")
    with pytest.raises(InputError):
        store.get(bad)
    with pytest.raises(InputError):
        store.open(bad)
    with pytest.raises(InputError):
        store.has(bad)
    with pytest.raises(InputError):
        store.size(bad)
    with pytest.raises(InputError):
        store.delete(bad)
    assert list(store.list_objects()) == []


def test_strict_names_put_file(backend: Backend, store: Store, tmp_path: Path) -> None:
    src = backend.scratch_dir(store, tmp_path) / "f"
    src.write_bytes(b"x")
    with pytest.raises(InputError):
        store.put_file("../x", src)
    assert src.exists()


# -- temp files ------------------------------------------------------------------------------------


def test_temp_files_never_listed(backend: Backend, store: Store) -> None:
    objs = _objects(5)
    for name, data in objs.items():
        store.put(name, data)
    backend.leave_temp(store, b"half-written")
    backend.leave_temp(store, b"")
    backend.plant_junk(store, "data/ab/not-an-object")
    backend.plant_junk(store, "data/ab/" + "0" * 38 + ".tmp")
    backend.plant_junk(store, "data/quarantaine/" + "0" * 40)
    assert sorted(store.list_objects()) == sorted(objs)


def test_temp_files_not_listed_during_writes(store: Store) -> None:
    """list_objects while a writer is busy shows only complete objects."""
    objs = _objects(150)
    done = threading.Event()
    errors: list[str] = []

    def lister() -> None:
        while not done.is_set():
            for name in store.list_objects():
                if name not in objs:
                    errors.append(name)
                    return

    t = threading.Thread(target=lister)
    t.start()
    try:
        for name, data in objs.items():
            store.put(name, data)
    finally:
        done.set()
        t.join()
    assert errors == []
    assert sorted(store.list_objects()) == sorted(objs)


def test_clean_temp(backend: Backend, store: Store) -> None:
    clean = getattr(store, "clean_temp", None)
    if clean is None:
        pytest.skip(f"{backend.name} has no temp files to clean")
    store.put(".cvmfspublished", b"m")
    objs = _objects(3)
    for name, data in objs.items():
        store.put(name, data)
    assert clean() == 0
    for i in range(4):
        backend.leave_temp(store, b"x" * i)
    assert clean() == 4
    assert clean() == 0
    assert sorted(store.list_objects()) == sorted(objs)
    assert store.get(".cvmfspublished") == b"m"
    # the store still works after cleaning
    store.put(".cvmfswhitelist", b"w")
    assert store.get(".cvmfswhitelist") == b"w"


def test_failed_put_leaves_no_temp(backend: Backend, store: Store) -> None:
    clean = getattr(store, "clean_temp", None)
    if clean is None:
        pytest.skip(f"{backend.name} has no temp files")
    with pytest.raises(InputError):
        store.put("bad", b"x")
    store.put(".cvmfspublished", b"ok")
    assert clean() == 0


# -- atomicity ---------------------------------------------------------------------------------------


VERSIONS = 201
"""How many versions ``test_atomic_put`` writes (0 first, then 1-200 while others read)."""


def _length(i: int) -> int:
    return 1000 + (i * 7919) % 200_000


def _version(i: int) -> bytes:
    # every version is one repeated byte with its own length: a mix is easy to detect
    return bytes([i % 251 + 1]) * _length(i)


_LENGTHS: dict[int, set[int]] = {}
"""The lengths of the versions starting with each byte (worked out once, not per read)."""
for _i in range(VERSIONS):
    _LENGTHS.setdefault(_i % 251 + 1, set()).add(_length(_i))


def _check_version(data: bytes) -> str | None:
    if not data:
        return "empty read"
    first = data[0]
    if data.count(first) != len(data):
        return f"mixed content (starts with {first})"
    if len(data) not in _LENGTHS.get(first, set()):
        return f"length {len(data)} does not match any version starting with {first}"
    return None


@pytest.mark.parametrize("name", [".cvmfspublished", "data/ab/" + "cd" * 19 + "C"])
def test_atomic_put(store: Store, name: str) -> None:
    store.put(name, _version(0))
    done = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not done.is_set() or reads[0] < 50:
            try:
                data = store.get(name)
                with store.open(name) as f:
                    first = f.read(10)
                    rest = f.read()
                data2 = first + rest
            except NotFoundError:
                problems.append("file vanished during replace")
                return
            for d in (data, data2):
                p = _check_version(d)
                if p:
                    problems.append(p)
                    return
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, VERSIONS):
            store.put(name, _version(i))
    finally:
        done.set()
        for t in threads:
            t.join()
    assert problems == []
    assert reads[0] >= 50
    assert store.get(name) == _version(VERSIONS - 1)


def test_open_reader_keeps_old_version(store: Store) -> None:
    store.put(".cvmfspublished", b"A" * 100_000)
    with store.open(".cvmfspublished") as f:
        head = f.read(10)
        store.put(".cvmfspublished", b"B" * 50)
        assert head + f.read() == b"A" * 100_000
    assert store.get(".cvmfspublished") == b"B" * 50


# -- LocalStore specifics ------------------------------------------------------------------------------


def test_local_store_layout(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        LocalStore(tmp_path / "nothing")
    store = LocalStore(tmp_path / "s", create=True)
    data_dirs = sorted(os.listdir(tmp_path / "s" / "data"))
    assert data_dirs == sorted([f"{i:02x}" for i in range(256)] + ["txn"])
    assert LocalStore(tmp_path / "s").root == store.root
    obj = make_object(b"hello\n")
    store.put(obj.hash.object_name(), obj.data)
    assert (tmp_path / "s" / "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3").read_bytes() == obj.data
    assert store.put_if_absent(obj.hash.object_name(), b"other") is False
    assert store.get(obj.hash.object_name()) == obj.data
    other = make_object(b"other")
    assert store.put_if_absent(other.hash.object_name(), other.data) is True
    assert store.get(other.hash.object_name()) == other.data
    # names are checked even when the path exists on disk
    (tmp_path / "s" / "data" / "exists").write_bytes(b"x")
    for bad in ("../s/data/exists", "data/exists", "/etc/hostname"):
        with pytest.raises(InputError):
            store.put_if_absent(bad, b"x")


def test_local_store_reads_stock_layout() -> None:
    """A stock stratum 0 tree (no data/txn, empty data/XX left out) is readable."""
    root = Path("/work/shared/fixtures/stock-cvmfs/stock.example.org")
    store = LocalStore(root)
    names = list(store.list_objects())
    assert len(names) >= 82
    assert store.has(".cvmfspublished")
    for name in names[:10]:
        assert store.size(name) == len(store.get(name))
