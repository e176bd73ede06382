"""Replicas and S3: a stratum 1 kept in a bucket, and a stratum 0 in a bucket replicated from its
plain HTTP endpoint (the way stratum 1s pull from an object-store stratum 0)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rcds.format.keys import load_public_key_file
from rcds.publish.stratum0 import Stratum0
from rcds.replica.replicator import ReplicaSpec, Replicator
from rcds.replica.snapshot import SnapshotResult
from rcds.repo.http_source import HttpSource
from rcds.repo.source import StoreSource
from rcds.repo.verify import verify_repository
from rcds.serve.http import make_server
from rcds.storage.locate import open_store
from rcds.testing.seaweedfs import SeaweedFS

from testkit import Entry, publish

pytestmark = pytest.mark.timeout(180)


def _entries(tag: str) -> list[Entry]:
    return [Entry(f"bin/t{i}", f"{tag} {i}\n".encode() * 50) for i in range(8)] + [
        Entry("big.bin", tag.encode() * 400_000)  # chunked with the test chunk sizes
    ]


def _pull(spec: ReplicaSpec) -> SnapshotResult:
    result = Replicator(workers=4).pull_all([spec])[0]
    assert isinstance(result, SnapshotResult), result
    return result


def test_a_replica_in_a_bucket(repo: Stratum0, s3_url: str, s3_env: SeaweedFS) -> None:
    publish(repo, _entries("a"), "/sw/g/a")
    key = load_public_key_file(repo.layout.key("pub"))
    server = make_server({repo.name: repo.layout.public}, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        dest = f"{s3_url}/{repo.name}"
        spec = ReplicaSpec(repo.name, server.url_for(repo.name), key, dest)
        first = _pull(spec)
        assert first.revision == 1 and first.objects_fetched > 10
        publish(repo, _entries("b"), "/sw/g/b")
        second = _pull(spec)
        assert second.revision == 2
        assert second.catalogs_skipped >= 1  # /sw/g/a was not fetched again
        assert second.objects_fetched < first.objects_fetched + 12
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)
    store = open_store(dest)
    try:
        # byte-identical to the upstream, and readable over the bucket's anonymous HTTP endpoint
        for name in store.list_objects():
            assert store.get(name) == (repo.layout.public / name).read_bytes(), name
        assert store.get(".cvmfspublished") == (repo.layout.public / ".cvmfspublished").read_bytes()
        assert not store.has(".cvmfs_is_snapshotting") and store.has(".cvmfs_last_snapshot")
        local = verify_repository(StoreSource(store), repo.name, [key])
    finally:
        store.close()
    http = HttpSource.for_url(f"{s3_env.endpoint}/{dest.removeprefix('s3://')}")
    try:
        remote = verify_repository(http, repo.name, [key])
    finally:
        http.close()
    assert (remote.revision, remote.objects) == (local.revision, local.objects) == (2, local.objects)


def test_a_stratum0_in_a_bucket_replicated_over_http(
    s3_repo: Stratum0, s3_env: SeaweedFS, tmp_path: Path
) -> None:
    publish(s3_repo, _entries("c"), "/sw/g/c")
    key = load_public_key_file(s3_repo.layout.key("pub"))
    loc = s3_repo.store.location.removeprefix("s3://")
    spec = ReplicaSpec(s3_repo.name, f"{s3_env.endpoint}/{loc}", key, tmp_path / "replica")
    result = _pull(spec)
    assert result.revision == 1
    report = verify_repository(StoreSource(open_store(tmp_path / "replica")), s3_repo.name, [key])
    assert report.revision == 1 and report.objects == result.objects_fetched - 1  # less the certificate
