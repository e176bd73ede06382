"""The publishing service announces every new revision: on its own broker and to configured brokers.

A real publish through the pubapi reaches a subscriber of the service's broker, an external broker,
and a client library repository that follows the notifications and switches to the new revision
without a TTL poll.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.client.fetch.notifications import NotificationFollower
from rcds.client.repository import Repository
from rcds.errors import NetworkError
from rcds.format.notification import Activity
from rcds.net.notify_post import post_activity
from rcds.net.notify_stream import Subscription
from rcds.notify.server import BrokerThread
from rcds.service.config import ServiceConfig
from rcds.service.runner import ServiceThread

import servicekit as kit

REPO = "user1.example.org"


@pytest.fixture(scope="module")
def external() -> Iterator[BrokerThread]:
    with BrokerThread() as b:
        yield b


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, external: BrokerThread) -> Iterator[ServiceThread]:
    tables = f'[notify]\nservers = ["{external.url}"]\n'
    cfg = kit.config(tmp_path_factory.mktemp("notify"), repositories=(REPO,), tables=tables)
    with ServiceThread(cfg, background=False) as st:
        yield st


def test_real_publish_is_announced(svc: ServiceThread, external: BrokerThread, tmp_path: Path) -> None:
    slot = svc.service.slots[0]
    key = slot.s0.layout.key("pub")
    got: list[Activity] = []
    sub = Subscription(svc.url, REPO)
    t = threading.Thread(target=lambda: got.extend(sub), daemon=True)
    repo = Repository.open_urls([svc.repo_url(REPO)], [key], cache_dir=tmp_path / "cache", ttl_override=3600)
    follower = NotificationFollower(repo, svc.url)
    try:
        t.start()
        follower.start()
        assert sub.connected.wait(10) and follower.subscription.connected.wait(10)
        before = repo.revision
        api = kit.Api(svc.url)
        data = kit.tarball(seed="notify-1")
        cid = kit.cid_of(data)
        assert api.publish(cid, data).status == 200
        assert api.wait_status(cid).text.startswith("PUBLISHED")
        api.close()
        now = slot.s0.manifest().revision
        published = (slot.public / ".cvmfspublished").read_bytes()
        assert kit.wait_until(lambda: any(a.manifest == published for a in got), 10)
        # the client switched on the notification alone (its TTL is an hour)
        assert follower.wait_for(lambda: follower.switched >= 1 and repo.revision == now, 10)
        assert repo.revision > before and follower.switched >= 1 and follower.rejected == 0
        assert repo.exists(f"/sw/{cid}/bin/run.sh")
        # the external broker got it too
        assert kit.wait_until(lambda: _last_revision(external) == now, 10)
    finally:
        follower.stop()
        repo.close()
        sub.close()
        t.join(10)


def _last_revision(b: BrokerThread) -> int | None:
    last = b.call(lambda: b.broker.last(REPO))
    return last.signed_manifest().manifest.revision if isinstance(last, Activity) else None


def test_broker_can_be_turned_off_and_config_is_checked(tmp_path: Path) -> None:
    cfg = kit.config(tmp_path / "off", repositories=(REPO,), tables="[notify]\nbroker = false\n")
    with ServiceThread(cfg, background=False) as st:
        assert st.service.broker is None and not st.service.notifier.enabled
        with pytest.raises(NetworkError, match="HTTP 404"):
            post_activity(st.url, b"{}")
    for bad, needle in (
        ('[notify]\nbroker = "yes"\n', "notify.broker"),
        ('[notify]\nservers = ["ftp://x"]\n', "notify.servers"),
        ('[notify]\nallow_publish = ["10.0.0.0/33"]\n', "notify.allow_publish"),
        ("[notify]\nport = 1\n", "notify"),
    ):
        with pytest.raises(Exception, match=needle):
            ServiceConfig.loads(bad)


def test_publish_endpoint_on_the_service(svc: ServiceThread) -> None:
    published = (svc.service.slots[0].public / ".cvmfspublished").read_bytes()
    answer = post_activity(svc.url, Activity.of(published).to_json())
    assert answer["status"] == "ok"
    bad = json.dumps({"version": 1, "type": "activity"}).encode()
    with pytest.raises(NetworkError, match="HTTP 400"):
        post_activity(svc.url, bad)
