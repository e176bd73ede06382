"""A publishing service whose repositories live in S3 (``[storage]``), on a real SeaweedFS: uploads
are published into the bucket, found by ``exists``, stamped, and read over the bucket's HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcds.client.repository import Repository
from rcds.errors import ConfigError
from rcds.service.runner import ServiceThread
from rcds.storage.locate import open_store
from rcds.testing.seaweedfs import SeaweedFS

import servicekit as kit

REPOS = ("user1.example.org",)
pytestmark = pytest.mark.timeout(120)


def test_storage_table_is_checked(tmp_path: Path) -> None:
    cfg = kit.config(tmp_path / "a", tables='[storage]\ns3 = "s3://bucket/pre"\nendpoint = "http://h:1"\n')
    assert cfg.storage is not None and (cfg.storage.s3, cfg.storage.endpoint) == (
        "s3://bucket/pre",
        "http://h:1",
    )
    for bad, key in (
        ('[storage]\ns3 = "http://bucket/x"\n', "storage.s3"),
        ('[storage]\nendpoint = "http://h"\n', "storage.s3"),
        ('[storage]\ns3 = "s3://bucket/x"\nsecret = "x"\n', "storage"),
    ):
        with pytest.raises(ConfigError, match=key):
            kit.config(tmp_path / "b", tables=bad)


def test_a_service_on_s3(s3_env: SeaweedFS, s3_url: str, tmp_path: Path) -> None:
    cfg = kit.config(tmp_path / "svc", repositories=REPOS, tables=f'[storage]\ns3 = "{s3_url}"\n')
    with ServiceThread(cfg, background=False) as st:
        slot = st.service.slots[0]
        assert slot.s0.store.location == f"{s3_url}/{REPOS[0]}"
        assert not (cfg.state_dir / REPOS[0] / "public").exists()
        api = kit.Api(st.url)
        try:
            data = kit.tarball(seed="s3")
            cid = kit.cid_of(data)
            assert api.publish(cid, data).status == 200
            assert api.wait_status(cid).text == f"PUBLISHED:/cvmfs/{REPOS[0]}/sw/{cid}\n"
            path = f"/cvmfs/{REPOS[0]}/sw/{cid}"
            assert api.get("exists", cid).text == f"PRESENT:{path}\n"  # the index read the bucket
            assert api.get("update", cid).text.startswith("PRESENT")
            before = slot.s0.manifest().revision
            st.service.stamps.flush()
            assert slot.s0.manifest().revision == before + 1  # the stamp went into the bucket
        finally:
            api.close()
    store = open_store(f"{s3_url}/{REPOS[0]}")
    assert store.has(".cvmfspublished")
    key = cfg.state_dir / REPOS[0] / "keys" / f"{REPOS[0]}.pub"
    http = f"{s3_env.endpoint}/{s3_url.removeprefix('s3://')}/{REPOS[0]}"
    with Repository.open_urls([http], [key], cache_dir=tmp_path / "cache", probe=False) as repo:
        assert repo.read_bytes(f"/sw/{cid}/README") == b"s3" * 20
