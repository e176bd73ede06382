"""The status page and ``/metrics`` of a real service on loopback: what a publish, a failure, an
upload in flight and a cleanup show; escaping; JSON; access rules; 100,000 CIDs from memory."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from rcds.service.activity import Activity, ProgressReader, PublishEvent, Series
from rcds.service.page.render import render
from rcds.service.page.snapshot import collect
from rcds.service.runner import ServiceThread

import pki
import servicekit as kit
from testkit import metric_samples

REPOS = ("user1.example.org", "user2.example.org")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    cfg = kit.config(tmp_path_factory.mktemp("page"), repositories=REPOS)
    with ServiceThread(cfg, background=False) as st:
        yield st


def metrics(api: kit.Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = api.page("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
    return metric_samples(r.text)


@pytest.mark.timeout(60)
def test_page_shows_a_publish_a_failure_and_the_repositories(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="page-ok")
    cid = kit.cid_of(data)
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    bad = b"this is not a tarball at all" * 10
    bad_cid = kit.cid_of(bad)
    api.publish(bad_cid, bad)
    assert api.wait_status(bad_cid).text.startswith("FAILED:")

    page = api.page("/status")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert cid in html and bad_cid in html
    assert "it is truncated" in html  # the failure's reason
    assert html.count('<svg id="plot-') == 3
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external assets
    assert "<script" not in html

    js = api.page("/status", headers={"Accept": "application/json"}).json()
    published_into = next(e["repository"] for e in js["recent"] if e["cid"] == cid)
    slot = next(s for s in svc.service.slots if s.name == published_into)
    svc.service.presence.refresh()
    js = api.page("/status", headers={"Accept": "application/json"}).json()
    repos = {r["name"]: r for r in js["repositories"]}
    assert repos[published_into]["revision"] == slot.s0.manifest().revision
    assert repos[published_into]["cids"] >= 1 and repos[published_into]["size"] > 0
    assert time.time() - repos[published_into]["published_at"] < 120
    event = next(e for e in js["recent"] if e["cid"] == cid)
    assert event["size"] == len(data) and 0 < event["latency"] < 60
    assert any(f["cid"] == bad_cid and f["reason"] for f in js["failures"])
    assert js["totals"]["published"] >= 1 and js["totals"]["failed"] >= 1

    got = metrics(api)
    assert got[("rcds_api_requests_total", (("method", "POST"), ("status", "200"), ("verb", "publish")))] >= 2
    assert got[("rcds_api_received_bytes_total", (("verb", "publish"),))] >= len(data) + len(bad)
    assert got[("rcds_publish_seconds_count", (("repository", published_into),))] >= 1
    failed_in = next(f["repository"] for f in js["failures"] if f["cid"] == bad_cid)
    assert got[("rcds_publishes_total", (("outcome", "failed"), ("repository", failed_in)))] >= 1
    assert got[("rcds_ingested_bytes_total", (("repository", published_into),))] >= len(data)
    assert got[("rcds_publish_queue_length", ())] == 0
    assert got[("rcds_repository_revision", (("repository", published_into),))] == slot.s0.manifest().revision
    assert got[("rcds_repository_cids", (("repository", published_into),))] >= 1


@pytest.mark.timeout(60)
def test_metrics_count_verbs_statuses_and_repository_bytes(svc: ServiceThread, api: kit.Api) -> None:
    before = metrics(api)
    assert api.get("exists", "dune/nothing-here").text == "MISSING\n"
    assert api.get("nosuchverb").status == 404
    assert api.get("exists").status == 400
    url = svc.repo_url(REPOS[0]) + "/.cvmfspublished"
    with urllib3.PoolManager(retries=False, timeout=10) as pool:
        body = pool.request("GET", url).data
    after = metrics(api)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("rcds_api_requests_total", (("method", "GET"), ("status", "200"), ("verb", "exists"))) == 1
    assert delta("rcds_api_requests_total", (("method", "GET"), ("status", "400"), ("verb", "exists"))) == 1
    assert delta("rcds_api_requests_total", (("method", "GET"), ("status", "404"), ("verb", "other"))) == 1
    assert (
        delta("rcds_api_request_seconds_count", (("method", "GET"), ("status", "200"), ("verb", "exists")))
        == 1
    )
    assert delta("rcds_api_sent_bytes_total", (("verb", "exists"),)) == len("MISSING\n") + len(
        "Bad request: exists with no cid\n"
    )
    assert kit.wait_until(
        lambda: (
            metrics(api).get(("rcds_repo_sent_bytes_total", (("verb", REPOS[0]),)), 0)
            >= before.get(("rcds_repo_sent_bytes_total", (("verb", REPOS[0]),)), 0) + len(body)
        )
    )


@pytest.mark.timeout(60)
def test_an_upload_in_flight_shows_its_progress(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="slow-upload" * 2000)
    cid = kit.cid_of(data)
    host, port = svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"POST /pubapi/publish?cid={cid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        half = len(data) // 2
        s.sendall(data[:half])

        def uploading() -> list[dict[str, object]]:
            js = api.page("/status", headers={"Accept": "application/json"}).json()
            return [r for r in js["receiving"] if r["cid"] == cid and r["done"] == half]

        assert kit.wait_until(uploading), "the half-sent upload is not on the page"
        page = api.page("/status").text
        assert "uploading" in page and f"{100 * half / len(data):.0f}% of" in page
        s.sendall(data[half:])
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    js = api.page("/status", headers={"Accept": "application/json"}).json()
    assert not [r for r in js["receiving"] + js["publishing"] if r["cid"] == cid]


@pytest.mark.timeout(60)
def test_cleanup_results_and_schedule_are_shown(svc: ServiceThread, api: kit.Api) -> None:
    slot = svc.service.slots[1]
    result = svc.service.cleaner.clean(slot)
    assert result.error is None
    page = api.page("/status").text
    assert f"removed {len(result.removed)} CIDs, kept {result.kept}" in page
    this_hour = dt.datetime.now().replace(minute=0, second=0, microsecond=0).timestamp()
    js = api.page("/status", headers={"Accept": "application/json"}).json()
    assert set(js["next_cleanups"]) == set(REPOS)
    # whole local hours, from this hour's (a repository whose hour it is and that no tick has
    # cleaned today is due now; the clean above is not a tick) to a day ahead
    for t in js["next_cleanups"].values():
        assert this_hour <= t <= time.time() + 86400
        assert dt.datetime.fromtimestamp(t).replace(minute=0, second=0, microsecond=0).timestamp() == t
    got = metrics(api)
    assert got[("rcds_cleanup_runs_total", (("outcome", "ok"), ("repository", slot.name)))] >= 1
    assert "no partner server configured" in page


def test_page_escapes_what_it_shows(svc: ServiceThread) -> None:
    svc.service.activity.failed("dune/<b>", None, "<img src=x onerror=alert(1)>")
    html = render(collect(svc.service))
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "dune/&lt;b&gt;" in html


def test_a_hundred_thousand_cids_are_counted_from_memory(svc: ServiceThread) -> None:
    presence = svc.service.presence
    name = REPOS[1]
    base = presence.count(name)
    rev = presence.index(name).revision
    assert rev is not None
    for i in range(100_000):
        presence.add(name, f"bulk/{i:064x}", rev.revision + 1)
    try:
        data = collect(svc.service)
        row = next(r for r in data.repositories if r.name == name)
        assert row.cids == base + 100_000
        html = render(data)
        assert f'<td class="num">{base + 100_000}</td>' in html
        assert len(html) < 200_000  # the page lists counts, not CIDs
    finally:
        idx = presence.index(name)
        for i in range(100_000):
            idx.cids.pop(f"bulk/{i:064x}", None)
            idx.added.pop(f"bulk/{i:064x}", None)


def test_series_and_progress_are_bounded_and_exact() -> None:
    s = Series(width=60, hours=1)
    for t in range(0, 7200, 30):
        s.add(float(t), 1.0)
    pts = s.points(7199.0)
    assert len(pts) == 60 and pts[0] == (3600.0, 2.0) and pts[-1] == (7140.0, 2.0)
    m = Series(width=60, hours=1, keep_max=True)
    m.add(0.0, 3)
    m.add(10.0, 1)
    assert m.points(10.0) == [(0.0, 3)]

    import io

    r = ProgressReader(io.BytesIO(b"x" * 1000))
    r.read(300)
    buf = bytearray(500)
    r.readinto(buf)
    assert r.done == 800

    act = Activity()
    for i in range(6000):  # one a second from t=960: 100 buckets of 60 s
        act.published(PublishEvent(f"g/{i}", "r", i, 10, 0.5 + (i % 60) / 100, 960.0 + i, "me"))
    recent, _f, _c, latency, _q, ingested = act.snapshot(960.0 + 6000)
    assert len(recent) == 50 and recent[0].cid == "g/5999"
    assert len(latency) == 100 and sum(v for _, v in ingested) == 60000
    t, mean, lo, hi = latency[0]
    assert (t, lo) == (990.0, 0.5) and abs(hi - 1.09) < 1e-9 and abs(mean - (0.5 + 0.295)) < 1e-9
    assert act.published_total == 6000 and act.ingested_total == 60000
    later = act.snapshot(960.0 + 6000 + 6 * 3600 - 120)[3]  # the window moved past all but one bucket
    assert len(later) == 1
    now = 960.0 + 6000 + 10  # 10 s into the last bucket: its point is not drawn in the future
    act.published(PublishEvent("g/now", "r", 1, 10, 0.7, now, "me"))
    assert act.snapshot(now)[3][-1] == (now, 0.7, 0.7, 0.7)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, ca: pki.CA) -> kit.Pki:
    return kit.Pki.create(tmp_path_factory.mktemp("pki"), ca)


@pytest.mark.timeout(60)
def test_page_and_metrics_need_credentials_like_the_api(
    tmp_path_factory: pytest.TempPathFactory, tls: kit.Pki
) -> None:
    cfg = kit.config(tmp_path_factory.mktemp("page-auth"), repositories=REPOS, tables=tls.tls_tables())
    with ServiceThread(cfg, background=False) as st:
        anon = kit.Api(st.url, ssl_context=tls.context())
        for path in ("/status", "/metrics"):
            r = anon.page(path)
            assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="rcds"'
        assert anon.page("/status", headers={"Accept": "application/json"}).status == 401
        with_token = kit.Api(st.url, ssl_context=tls.context(), token=tls.token())
        assert with_token.page("/status").status == 200
        assert "rcds_api_requests_total" in with_token.page("/metrics").text
        with_cert = kit.Api(st.url, ssl_context=tls.context(tls.alice, "alice-page"))
        assert with_cert.page("/status").status == 200
        with_bad_token = kit.Api(st.url, ssl_context=tls.context(), token=tls.token() + "x")
        assert with_bad_token.page("/metrics").status == 401
        assert anon.page("/").status == 302


@pytest.mark.timeout(60)
def test_queued_and_running_publishes_are_listed(tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg = kit.config(tmp_path_factory.mktemp("page-queue"), repositories=("q.example.org",))
    with ServiceThread(cfg, background=False) as st:
        api = kit.Api(st.url)
        slot = st.service.slots[0]
        datas = [kit.tarball(seed=f"queued-{i}") for i in range(3)]
        cids = [kit.cid_of(d) for d in datas]
        with slot.lock:  # the repository is busy (as with an admin's command): publishes wait
            for cid, data in zip(cids, datas, strict=True):
                assert api.publish(cid, data).text == "OK\n"

            def state() -> Any:
                return api.page("/status", headers={"Accept": "application/json"}).json()

            assert kit.wait_until(lambda: len(state()["waiting"]) == 2)
            js = state()
            assert [r["cid"] for r in js["publishing"]] == [cids[0]]
            assert [r["cid"] for r in js["waiting"]] == cids[1:]
            assert js["queued"] == 2
            page = api.page("/status").text
            assert "Queue: 2 waiting, 1 publishing, 0 uploading" in page
            assert page.count("<td>queued</td>") == 2 and f"{len(datas[1])} B to publish" in page
            got = metrics(api)
            assert got[("rcds_publish_queue_length", ())] == 2
            assert got[("rcds_publishes_in_flight", ())] == 1
        for cid in cids:
            assert api.wait_status(cid).text.startswith("PUBLISHED:")
        js = api.page("/status", headers={"Accept": "application/json"}).json()
        assert js["waiting"] == [] and js["publishing"] == []
        assert [e["cid"] for e in js["recent"]] == cids[::-1]
        api.close()
