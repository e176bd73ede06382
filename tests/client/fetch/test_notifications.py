"""Pushed manifests: verified like downloaded ones, applied only when newer, followed from a broker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.client.config.settings import load_client_config
from rcds.client.fetch.notifications import NotificationFollower, notification_server
from rcds.errors import IntegrityError
from rcds.format.notification import Activity
from rcds.net.notify_post import post_activity
from rcds.notify.server import BrokerThread

from testkit import NAME, Entry

if TYPE_CHECKING:
    from conftest import Site


def test_apply_newer_manifest_switches_without_a_poll(site: Site) -> None:
    repo = site.open(ttl_override=3600)
    old = repo.revision
    new = site.publish([Entry("n.txt", b"new\n")], "/sw/g/new")
    raw = (site.public / ".cvmfspublished").read_bytes()
    assert repo.revision == old  # the TTL has not expired: no poll would see it yet
    assert repo.apply_manifest(raw) is True
    assert repo.revision == new
    assert repo.read_bytes("/sw/g/new/n.txt") == b"new\n"
    assert repo.apply_manifest(raw) is False  # the same again: nothing to do


def test_forged_manifest_is_rejected(site: Site) -> None:
    repo = site.open(ttl_override=3600)
    old = repo.revision
    m = site.manifest().evolve(revision=old + 5)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(IntegrityError, match="signature"):
        repo.apply_manifest(m.sign(forger))
    foreign = m.evolve(repository_name="other.example.org").sign(site.private_key("key"))
    with pytest.raises(IntegrityError, match=r"other\.example\.org"):
        repo.apply_manifest(foreign)
    assert repo.revision == old


def test_older_manifest_is_ignored(site: Site) -> None:
    older = (site.public / ".cvmfspublished").read_bytes()
    site.publish([Entry("n.txt", b"new\n")], "/sw/g/new")
    repo = site.open(ttl_override=3600)
    now = repo.revision
    assert repo.apply_manifest(older) is False
    assert repo.revision == now


def test_follower_applies_only_verified_newer(site: Site) -> None:
    repo = site.open(ttl_override=3600)
    switches: list[int] = []
    with (
        BrokerThread() as broker,
        NotificationFollower(repo, broker.url, on_switch=switches.append, backoff=(0.05, 0.5)) as follower,
    ):
        assert follower.subscription.connected.wait(10)
        forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = site.manifest().evolve(revision=repo.revision + 9).sign(forger)
        post_activity(broker.url, Activity.of(forged).to_json())
        assert follower.wait_for(lambda: follower.rejected == 1, 10)
        older = (site.public / ".cvmfspublished").read_bytes()
        new = site.publish([Entry("n.txt", b"new\n")], "/sw/g/new")
        post_activity(broker.url, Activity.of((site.public / ".cvmfspublished").read_bytes()).to_json())
        assert follower.wait_for(lambda: follower.switched == 1 and repo.revision == new, 10)
        post_activity(broker.url, Activity.of(older).to_json())
        assert follower.wait_for(lambda: follower.received == 3, 10)
        assert repo.revision == new and switches == [new]
        assert follower.rejected == 1 and follower.switched == 1


def test_notification_server_setting(tmp_path: Path) -> None:
    assert notification_server(load_client_config(NAME, etc_dir=tmp_path)) is None
    (tmp_path / "default.local").write_text("CVMFS_NOTIFICATION_SERVER=http://b:4929/api/v1\n")
    assert notification_server(load_client_config(NAME, etc_dir=tmp_path)) == "http://b:4929/api/v1"
