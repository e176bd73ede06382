"""The broker over real HTTP on loopback: fan-out, stock clients, slow and many subscribers, restarts."""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from rcds.errors import NetworkError
from rcds.format.notification import Activity
from rcds.net.notify_post import NotifySender, post_activity
from rcds.net.notify_stream import Subscription, subscribe_async
from rcds.notify.broker import Broker
from rcds.notify.server import BrokerThread

from notifykit import Signer, StockSubscriber, wait_until
from testkit import NAME


@contextmanager
def collecting(sub: Subscription) -> Iterator[list[Activity]]:
    """Iterate ``sub`` in a thread, collecting its messages; closed at the end."""
    got: list[Activity] = []

    def run() -> None:
        for a in sub:
            got.append(a)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield got
    finally:
        sub.close()
        t.join(10)
        assert not t.is_alive()


def raw(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data.startswith(b"{") else {"text": data})
    finally:
        conn.close()


def test_publish_subscribe_round_trip(broker: BrokerThread, signer: Signer) -> None:
    sub = Subscription(broker.url, NAME)
    with collecting(sub) as got:
        assert sub.connected.wait(10)
        assert wait_until(lambda: broker.broker.subscribers(NAME) == 1)
        answer = post_activity(broker.url, signer.activity(5).to_json())
        assert answer == {"status": "ok", "subscribers": 1}
        assert wait_until(lambda: len(got) == 1)
        assert got[0].manifest == signer.manifest(5)
        assert got[0].repository == NAME
        # another repository's message does not reach this subscription
        other = Subscription(broker.url, "other.example.org")
        with collecting(other) as got_other:
            assert other.connected.wait(10)
            post_activity(broker.url, signer.activity(6).to_json())
            assert wait_until(lambda: len(got) == 2)
            time.sleep(0.2)
            assert got_other == []
    assert wait_until(lambda: broker.broker.subscribers() == 0)


def test_last_message_is_sent_on_subscribe(broker: BrokerThread, signer: Signer) -> None:
    post_activity(broker.url, signer.activity(7).to_json())
    post_activity(broker.url, signer.activity(8).to_json())
    with collecting(Subscription(broker.url, NAME)) as got:
        assert wait_until(lambda: len(got) == 1)
        time.sleep(0.2)
        assert [a.signed_manifest().manifest.revision for a in got] == [8]
    last = broker.call(lambda: broker.broker.last(NAME))
    assert isinstance(last, Activity) and last.signed_manifest().manifest.revision == 8


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_stock_client_bytes(broker: BrokerThread, signer: Signer, prefix: str) -> None:
    """A subscriber speaking exactly stock's request and parsing exactly like stock."""
    post_activity(broker.url, signer.activity(3).to_json())
    stock = StockSubscriber(broker.port, NAME, prefix)
    head = stock.read_head().decode().lower()
    assert head.startswith("http/1.1 200")
    assert "content-type: text/event-stream" in head
    assert "transfer-encoding: chunked" in head
    t = threading.Thread(target=stock.run, daemon=True)
    t.start()
    assert wait_until(lambda: len(stock.messages) == 1)  # the kept message, at once
    post_activity(broker.url + prefix, signer.activity(4).to_json())
    assert wait_until(lambda: len(stock.messages) == 2)
    assert [m.signed_manifest().manifest.revision for m in stock.messages] == [3, 4]
    assert stock.messages[1].manifest == signer.manifest(4)
    assert stock.errors == []
    # a broker shutdown must look like an error to stock (it re-subscribes only after errors)
    broker.stop()
    assert stock.ended.wait(10)
    assert stock.errors and "without the last chunk" in stock.errors[0]
    stock.close()


def test_bad_publishes_are_refused_and_change_nothing(broker: BrokerThread, signer: Signer) -> None:
    good = json.loads(signer.activity(9).to_json())
    for body, needle in (
        (b"{not json", "not JSON"),
        (json.dumps({**good, "type": "x"}).encode(), "'type' must be 'activity'"),
        (json.dumps({**good, "repository": "other.example.org"}).encode(), "is for 'test.example.org'"),
        (json.dumps({**good, "manifest": "AAAA"}).encode(), "notified manifest"),
    ):
        status, answer = raw(broker.url, "POST", "/notifications/publish", body)
        assert status == 400, answer
        assert answer["status"] == "error" and needle in str(answer["reason"])
    assert broker.call(lambda: broker.broker.last(NAME)) is None
    status, _ = raw(broker.url, "GET", "/notifications/publish")
    assert status == 405
    status, answer = raw(broker.url, "GET", "/notifications/subscribe", b'{"version":1}')
    assert status == 400 and "repository name" in str(answer["reason"])


def test_oversized_bodies_and_query_subscriptions(broker: BrokerThread, signer: Signer) -> None:
    status, answer = raw(broker.url, "POST", "/notifications/publish", b" " * ((1 << 20) + 1))
    assert status == 413 and "at most" in str(answer["reason"])
    status, answer = raw(broker.url, "GET", "/notifications/subscribe", b" " * 5000)
    assert status == 413
    post_activity(broker.url, signer.activity(21).to_json())
    host, port = broker.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/api/v1/notifications/subscribe?repository={NAME}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
        line = resp.fp.readline()  # chunk size
        event = resp.fp.readline()
        assert line.strip() and event.startswith(b"data: {") and b'"repository":"test.example.org"' in event
    finally:
        conn.close()


def test_async_iterator(broker: BrokerThread, signer: Signer) -> None:
    async def first_two() -> list[int]:
        got: list[int] = []
        it = subscribe_async(broker.url, NAME, backoff=(0.05, 0.5))
        try:
            async for a in it:
                got.append(a.signed_manifest().manifest.revision)
                if len(got) == 1:
                    await asyncio.to_thread(post_activity, broker.url, signer.activity(23).to_json())
                else:
                    return got
        finally:
            await it.aclose()
        return got

    post_activity(broker.url, signer.activity(22).to_json())
    assert asyncio.run(asyncio.wait_for(first_two(), 20)) == [22, 23]
    assert wait_until(lambda: broker.broker.subscribers() == 0)


def test_publishers_outside_the_allowed_networks_are_refused(signer: Signer) -> None:
    with BrokerThread(Broker(allow_publish=["10.0.0.0/8"])) as b:
        with pytest.raises(NetworkError, match="HTTP 403"):
            post_activity(b.url, signer.activity(1).to_json())
        assert b.call(lambda: b.broker.last(NAME)) is None


def test_slow_subscriber_does_not_stall_others(signer: Signer) -> None:
    with BrokerThread(Broker(write_timeout=1.0, check_interval=0.5)) as b:
        slow = StockSubscriber(b.port, NAME, rcvbuf=4096)  # never reads a byte
        fast = Subscription(b.url, NAME)
        with collecting(fast) as got:
            assert wait_until(lambda: b.broker.subscribers(NAME) == 2)
            messages = [signer.activity(r).to_json() for r in range(1, 401)]
            start = time.monotonic()
            for m in messages:
                post_activity(b.url, m)
                assert time.monotonic() - start < 60
            assert wait_until(lambda: got and got[-1].signed_manifest().manifest.revision == 400, 5)
            # the stuck reader was cut off after its write timed out; the others kept going
            assert wait_until(lambda: b.broker.stats.slow_disconnects == 1, 10)
            assert b.broker.subscribers(NAME) == 1
            post_activity(b.url, signer.activity(401).to_json())
            assert wait_until(lambda: got[-1].signed_manifest().manifest.revision == 401, 5)
        slow.close()


def test_broker_restart_subscriber_reconnects(signer: Signer) -> None:
    first = BrokerThread(Broker())
    port = first.port
    sub = Subscription(first.url, NAME, backoff=(0.05, 0.5))
    with collecting(sub) as got:
        assert sub.connected.wait(10)
        first.stop()
        assert wait_until(lambda: not sub.connected.is_set(), 10)
        time.sleep(0.3)  # a few refused reconnects while nothing listens
        with BrokerThread(Broker(), port=port) as second:
            assert sub.connected.wait(10)
            assert sub.connects == 2
            post_activity(second.url, signer.activity(11).to_json())
            assert wait_until(lambda: len(got) == 1)
            assert got[0].signed_manifest().manifest.revision == 11


def test_many_idle_subscribers_are_cheap(broker: BrokerThread, signer: Signer) -> None:
    n = 500
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    subs = [StockSubscriber(broker.port, NAME) for _ in range(n)]
    try:
        for s in subs:
            s.read_head()
        assert wait_until(lambda: broker.broker.subscribers(NAME) == n, 30)
        start = time.monotonic()
        answer = post_activity(broker.url, signer.activity(12).to_json())
        assert answer["subscribers"] == n
        for s in subs:
            s.sock.settimeout(10)
            piece = s.sock.recv(65536)
            assert b"data: {" in piece
        fan_out = time.monotonic() - start
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        print(f"{n} subscribers: fan-out to all in {fan_out * 1000:.0f} ms, peak RSS grew {grown_kib} KiB")
        assert fan_out < 10
        assert grown_kib / n < 200  # both ends of every connection live in this process
    finally:
        for s in subs:
            s.close()
    assert wait_until(lambda: broker.broker.subscribers() == 0, 30)


def test_sender_delivers_in_background_and_never_raises(broker: BrokerThread, signer: Signer) -> None:
    sender = NotifySender([broker.url, "http://127.0.0.1:9"], first_pause=0.01, retries=1, timeout=1)
    try:
        sender.announce(signer.manifest(13))
        sender.announce(b"garbage")  # logged, not raised
        assert sender.flush(10)
        assert sender.sent == 1 and sender.failed == 1
        last = broker.call(lambda: broker.broker.last(NAME))
        assert isinstance(last, Activity) and last.signed_manifest().manifest.revision == 13
    finally:
        sender.close()
