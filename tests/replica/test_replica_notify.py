"""``rcds replica run`` with ``[notify]``: pulls when the stratum 0 announces, then announces itself.

Real parts on loopback: a stratum 0 served by ``rcds.serve``, the upstream's broker, the
``rcds replica run`` process with its own broker, and a subscriber of that broker. The pull
interval is long (300 s), so only a notification can bring the new revision within the bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from rcds.format import manifest as manifest_fmt
from rcds.net.notify_post import NotifySender
from rcds.net.notify_stream import Subscription
from rcds.notify.server import BrokerThread
from rcds.publish.stratum0 import Stratum0
from rcds.serve.http import make_server

from replkit import cid_entries, get, key_file, replica_config, replica_run, revision_of
from testkit import publish, scrape

pytestmark = pytest.mark.timeout(90)


def test_a_notification_pulls_at_once_and_the_replica_announces_what_it_pulled(
    repo: Stratum0, tmp_path: Path
) -> None:
    publish(repo, cid_entries("a"), "/sw/g/a")
    fqrn = repo.name
    with make_server({fqrn: repo.layout.public}) as upstream, BrokerThread() as s0_broker:
        upstream.start_background()
        cfg = replica_config(
            tmp_path / "replica.toml",
            fqrn,
            upstream.url_for(fqrn),
            key_file(repo),
            sections="[serve]\nport = 0\n\n"
            f"[notify]\nsubscribe = ['{s0_broker.url}']\nbroker_port = 0\n\n[metrics]\nport = 0\n\n",
        )
        with replica_run(cfg) as lines, contextlib.ExitStack() as cleanup:
            started = lines.wait_for(
                r"serving at http://127\.0\.0\.1:(\d+)/cvmfs/; notifications at (http://127\.0\.0\.1:\d+)"
                r"/notifications/; metrics at (http://127\.0\.0\.1:\d+/metrics)"
            )
            serve_port, broker_url, metrics_url = int(started.group(1)), started.group(2), started.group(3)
            lines.wait_for(rf"{fqrn}: revision 1\b")  # the first pull, at start
            replica = tmp_path / "s1" / fqrn
            assert revision_of(replica) == 1
            sub = Subscription(broker_url, fqrn, backoff=(0.05, 0.2))
            cleanup.callback(sub.close)  # before the replica stops
            received: list[int] = []

            def listen() -> None:
                for activity in sub:
                    received.append(manifest_fmt.parse(activity.manifest).manifest.revision)

            threading.Thread(target=listen, daemon=True).start()
            assert sub.connected.wait(10)
            # the replica's subscription to the stratum 0's broker is up too (else it misses the news)
            deadline = time.monotonic() + 10
            while s0_broker.broker.subscribers(fqrn) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert s0_broker.broker.subscribers(fqrn) >= 1
            sender = NotifySender([s0_broker.url])
            announcing = Stratum0(repo.layout.root, fqrn, on_revision=sender.announce)
            t0 = time.monotonic()
            publish(announcing, cid_entries("b"), "/sw/g/b")
            sender.close()
            deadline = t0 + 10
            while 2 not in received and time.monotonic() < deadline:
                time.sleep(0.02)
            took = time.monotonic() - t0
            assert 2 in received, f"the replica announced {received} within {took:.1f} s"
            assert revision_of(replica) == 2  # announced only once it was in place
            assert took < 10
            status, _, _ = get(serve_port, f"/cvmfs/{fqrn}/.cvmfspublished")
            assert status == 200
            # The server counts a request once its answer is written: the client may read the
            # answer before the count is made, so wait (bounded) for it.
            key = ("rcds_repo_requests_total", (("method", "GET"), ("status", "200"), ("verb", fqrn)))
            samples = scrape(metrics_url)
            deadline = time.monotonic() + 10
            while samples.get(key, 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
                samples = scrape(metrics_url)
            assert samples.get(key, 0) >= 1
            assert samples[("rcds_replica_pulls_total", (("outcome", "ok"), ("repository", fqrn)))] >= 2
            assert samples[("rcds_repository_revision", (("repository", fqrn),))] == 2
            assert samples[("rcds_replica_fetched_bytes_total", (("repository", fqrn),))] > 0
            # the upstream's fresh whitelist, passed on: 30 days left, nothing to re-sign
            assert samples[("rcds_whitelist_seconds_left", (("repository", fqrn),))] > 29 * 86400
            assert samples[("rcds_whitelist_needs_resign", (("repository", fqrn),))] == 0


def test_a_served_whitelist_near_expiry_is_reported_loudly(tmp_path: Path) -> None:
    """A stratum 1 only passes on its upstream's whitelist: when it has under a third of its
    validity left, ``rcds replica run`` says so (the upstream must re-sign) and ``/metrics`` shows it."""
    from rcds.publish.create import create_repository
    from rcds.publish.layout import Settings

    from testkit import NAME

    root = tmp_path / "s0"
    create_repository(root, Settings(name=NAME), now=int(time.time()) - 25 * 86400)  # 5 days left
    s0 = Stratum0(root, NAME)
    publish(s0, cid_entries("a"), "/sw/g/a")
    with make_server({NAME: s0.layout.public}) as upstream:
        upstream.start_background()
        cfg = replica_config(
            tmp_path / "replica.toml",
            NAME,
            upstream.url_for(NAME),
            key_file(s0),
            sections="[metrics]\nport = 0\n\n",
        )
        with replica_run(cfg) as lines:
            metrics_url = lines.wait_for(r"metrics at (http://127\.0\.0\.1:\d+/metrics)").group(1)
            lines.wait_for(
                rf"WARNING: the whitelist of {NAME} expires in [45] days .*the upstream must re-sign it"
            )
            samples = scrape(metrics_url)
            assert samples[("rcds_whitelist_needs_resign", (("repository", NAME),))] == 1
            assert (
                4 * 86400 < samples[("rcds_whitelist_seconds_left", (("repository", NAME),))] < 5 * 86400 + 60
            )
