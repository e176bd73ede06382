"""A stratum 0 whose served tree is in S3 (SeaweedFS): every ``rcds repo`` command, readers over
the bucket's plain HTTP endpoint, a crash's leftovers collected, and the object store killed
mid-publish."""

from __future__ import annotations

import io
import random
import re
import threading
import time
from pathlib import Path

import pytest

from rcds.cli.main import main
from rcds.client.repository import Repository
from rcds.errors import StorageError
from rcds.format.compression import make_object
from rcds.format.hashes import ObjectKind
from rcds.format.keys import load_public_key_file
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.http_source import HttpSource
from rcds.repo.verify import verify_repository
from rcds.storage.s3 import S3Store
from rcds.testing.seaweedfs import SeaweedFS

from testkit import NAME, SMALL_CHUNKS, Entry, make_tar, publish, verify

pytestmark = pytest.mark.timeout(300)


def _http_url(server: SeaweedFS, s3_url: str) -> str:
    return f"{server.endpoint}/{s3_url.removeprefix('s3://')}"


def test_every_repo_command_on_s3_and_readers_over_http(
    s3_env: SeaweedFS, s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{s3_url}/{NAME}"  # the prefix ends in the name, as ENDPOINT/BUCKET/.../@fqrn@ wants
    root = str(tmp_path / "r")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (src / "big.dat").write_bytes(random.Random(1).randbytes(3 << 20))
    assert (
        main(["repo", "create", NAME, "--root", root, "--storage", url, "--chunk-sizes", "256K,512K,1M"]) == 0
    )
    assert not (tmp_path / "r" / "public").exists()  # the served tree is in the bucket only
    assert main(["repo", "ingest", NAME, "--root", root, "--dir", str(src), "--path", "/sw/g/one"]) == 0
    tar = tmp_path / "two.tgz"
    tar.write_bytes(make_tar([Entry("x.txt", b"two\n")]))
    assert main(["repo", "ingest", NAME, "--root", root, "--tar", str(tar), "--path", "/sw/g/two"]) == 0
    assert main(["repo", "rm", NAME, "--root", root, "--path", "/sw/g/two"]) == 0
    assert main(["repo", "resign", NAME, "--root", root]) == 0
    assert main(["repo", "verify", NAME, "--root", root]) == 0
    assert main(["repo", "gc", NAME, "--root", root, "--keep-revisions", "1"]) == 0
    assert main(["repo", "info", NAME, "--root", root]) == 0
    out = capsys.readouterr().out
    assert "now at revision 3" in out
    assert f"served tree:       {url}" in out
    assert re.search(r"deleted [1-9]\d* objects", out), out  # old root catalogs, two's catalog and file
    # rcds repo serve points at the bucket instead
    assert main(["repo", "serve", NAME, "--root", root]) != 0
    assert "bucket's HTTP endpoint" in capsys.readouterr().err
    # readers: plain anonymous HTTP GETs from the bucket's endpoint, exactly as from a stratum
    http = _http_url(s3_env, url)
    key = tmp_path / "r" / "keys" / f"{NAME}.pub"
    assert main(["repo", "verify", http, "--key", str(key)]) == 0
    assert "revision 3 is intact" in capsys.readouterr().out
    report = verify_repository(HttpSource.for_url(http), NAME, [load_public_key_file(key)])
    assert report.revision == 3
    with Repository.open_urls([http], [key], cache_dir=tmp_path / "cache", probe=False) as repo:
        assert repo.read_bytes("/sw/g/one/bin/tool") == b"#!/bin/sh\necho tool\n"
        assert repo.read_bytes("/sw/g/one/big.dat") == (src / "big.dat").read_bytes()


def test_a_crashed_publish_leaves_the_revision_and_gc_removes_its_leftovers(s3_repo: Stratum0) -> None:
    publish(s3_repo, [Entry("keep.txt", b"kept\n")], "/sw/g/keep")
    store = s3_repo.store
    assert isinstance(store, S3Store)
    before = store.get(".cvmfspublished")
    # what a writer killed mid-publish leaves: objects no catalog names, an unfinished upload
    orphans = [make_object(f"orphan {i}".encode()) for i in range(5)]
    for obj in orphans:
        store.put(obj.hash.object_name(), obj.data)
    c, bucket = store._client, store.loc.bucket
    key = store.loc.key(make_object(b"half").hash.object_name(ObjectKind.PARTIAL))
    upload = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1000)
    assert store.get(".cvmfspublished") == before
    assert verify(s3_repo).revision == 1
    result = s3_repo.gc(keep_revisions=1)
    assert result.deleted >= len(orphans)
    assert not any(store.has(o.hash.object_name()) for o in orphans)
    assert c.list_multipart_uploads(Bucket=bucket, Prefix=store.loc.key("")).get("Uploads", []) == []
    assert verify(s3_repo).revision == 1


@pytest.fixture
def own_seaweedfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A SeaweedFS of this test alone (it gets killed), its settings in the AWS environment."""
    server = SeaweedFS(tmp_path / "weed")
    server.start()
    try:
        server.make_bucket("killed")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("RCDS_S3_ATTEMPTS", "3")
        yield server
    finally:
        server.stop(timeout=3)


@pytest.mark.slow
def test_killing_the_object_store_mid_publish(own_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    create_repository(root, Settings(name=NAME, storage="s3://killed/repo", **SMALL_CHUNKS))  # type: ignore[arg-type]
    s0 = Stratum0(root, NAME)
    publish(s0, [Entry("keep.txt", b"before the crash\n")], "/sw/g/keep")
    manifest = s0.store.get(".cvmfspublished")
    rng = random.Random(3)
    big = make_tar([Entry(f"f{i}.bin", rng.randbytes(20_000)) for i in range(600)], "none")
    outcome: list[BaseException | int] = []

    def ingest() -> None:
        try:
            outcome.append(s0.ingest_tar(io.BytesIO(big), "/sw/g/new").revision)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=ingest)
    t.start()
    store = s0.store
    deadline = time.monotonic() + 60
    while sum(1 for _ in store.list_objects()) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)  # uploads are under way
    own_seaweedfs.kill()
    t.join(120)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StorageError), outcome
    message = str(outcome[0])
    assert "s3://killed/repo" in message and "check that the object store is up" in message
    own_seaweedfs.start()
    assert store.get(".cvmfspublished") == manifest  # the previous revision, untouched
    assert verify(s0).revision == 1
    assert s0.gc(keep_revisions=1).deleted > 0  # the uploads of the failed publish
    assert verify(s0).revision == 1
    assert s0.ingest_tar(io.BytesIO(big), "/sw/g/new").revision == 2  # and publishing works again
    assert verify(s0).revision == 2
