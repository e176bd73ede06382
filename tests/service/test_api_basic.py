"""The pubapi over loopback HTTP: today's replies byte for byte, JSON, status, methods, CID errors,
de-duplication, re-upload after a failure, and parallel publishing across repositories."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from rcds.service.runner import ServiceThread

import servicekit as kit

REPOS = ("user1.example.org", "user2.example.org")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    cfg = kit.config(tmp_path_factory.mktemp("api"), repositories=REPOS)
    # no periodic threads: the tests flush stamps themselves and count revisions
    with ServiceThread(cfg, background=False) as st:
        yield st


def records_for(svc: ServiceThread, cid: str) -> list[object]:
    return [r for r in svc.service.queue.records if r.cid == cid]


@pytest.mark.timeout(30)
def test_ping_and_config_are_todays_bytes(api: kit.Api) -> None:
    r = api.get("ping")
    assert (r.status, r.text) == (200, "OK\n")
    assert r.headers["Cache-Control"] == "max-age=0"
    assert r.headers["Content-Type"].startswith("text/plain")
    r = api.get("config")
    assert (r.status, r.text) == (200, "repos:user1.example.org,user2.example.org\n")
    j = api.get("config", headers={"Accept": "application/json"})
    assert j.headers["Content-Type"].startswith("application/json")
    assert j.json() == {"repos": list(REPOS), "prefix": "sw"}
    assert api.get("ping", headers={"Accept": "application/json"}).json() == {"status": "OK"}


@pytest.mark.timeout(60)
def test_publish_exists_update_status(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="flow")
    cid = kit.cid_of(data)
    assert api.get("exists", cid).text == "MISSING\n"
    assert api.get("update", cid).text == "MISSING\n"
    st = api.get("status", cid)
    assert st.status == 404 and st.text.count("\n") == 1 and cid in st.text

    before = kit.revisions(svc)
    r = api.publish(cid, data)
    assert (r.status, r.text) == (200, "OK\n")
    st = api.wait_status(cid)
    repo = next(n for n in REPOS if st.text == f"PUBLISHED:/cvmfs/{n}/sw/{cid}\n")
    path = f"/cvmfs/{repo}/sw/{cid}"
    assert api.get("status", cid, headers={"Accept": "application/json"}).json() == {
        "cid": cid,
        "state": "published",
        "repository": repo,
        "reason": None,
        "updated": pytest.approx(time.time(), abs=60),
        "path": path,
    }
    after = kit.revisions(svc)
    assert after[repo] == before[repo] + 1  # one revision for the tarball
    assert len(records_for(svc, cid)) == 1

    for verb in ("exists", "update"):
        r = api.get(verb, cid)
        assert (r.status, r.text) == (200, f"PRESENT:{path}\n")
    assert api.get("exists", cid, headers={"Accept": "application/json"}).json() == {
        "status": "PRESENT",
        "cid": cid,
        "repository": repo,
        "path": path,
    }
    assert api.get("exists", "dune/" + "0" * 64, headers={"Accept": "application/json"}).json() == {
        "status": "MISSING",
        "cid": "dune/" + "0" * 64,
    }

    # publishing a present CID answers PRESENT and touches its stamp, without a new publish
    svc.service.stamps.flush()
    assert cid not in svc.service.stamps.pending()
    r = api.publish(cid, data)
    assert (r.status, r.text) == (200, f"PRESENT:{path}\n")
    assert cid in svc.service.stamps.pending()
    assert len(records_for(svc, cid)) == 1

    # the tarball is in the repository as its own nested catalog
    assert cid in svc.service.presence.cids_of(repo)


@pytest.mark.timeout(30)
def test_update_touches_the_stamp(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="stamp")
    cid = kit.cid_of(data)
    api.publish(cid, data)
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    svc.service.stamps.flush()
    assert cid not in svc.service.stamps.pending()
    assert api.get("exists", cid).text.startswith("PRESENT:")
    assert cid not in svc.service.stamps.pending()  # exists does not stamp
    assert api.get("update", cid).text.startswith("PRESENT:")
    assert cid in svc.service.stamps.pending()


@pytest.mark.timeout(30)
def test_encoded_slash_and_first_cid_win(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="encoded")
    cid = kit.cid_of(data)
    r = api.publish(quote(cid, safe=""), data)  # jobsub sends dune%2F<hash>
    assert r.text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert api.get("exists", query=f"cid={quote(cid, safe='')}").text.startswith("PRESENT:")
    assert api.get("exists", query=f"cid={cid}&cid=dune/other").text.startswith("PRESENT:")


@pytest.mark.timeout(30)
def test_methods_and_verbs(api: kit.Api) -> None:
    r = api.request("POST", "exists", "dune/x")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD" and r.text == "exists takes GET or HEAD\n"
    r = api.request("GET", "publish", "dune/x")
    assert r.status == 405 and "POST" in r.headers["Allow"]
    r = api.request("DELETE", "ping")
    assert r.status == 405
    r = api.get("delete", "dune/x")
    assert (r.status, r.text) == (404, "Unrecognized api\n")
    assert api.get("startup").status == 404
    assert api.request("HEAD", "exists", "dune/x").status == 200
    j = api.request("POST", "exists", "dune/x", headers={"Accept": "application/json"})
    assert j.status == 405 and j.json() == {"error": "exists takes GET or HEAD", "status": 405}


BAD_CIDS = [
    ("..%2Fetc", "'..' component"),
    ("%2Fetc%2Fpasswd", "absolute"),
    (".hidden", "start with '.'"),
    ("a%2Fb%2Fc", "at most one slash"),
    ("dune%2F", "end with '/'"),
    ("dune%2F%2Fx", "empty component"),
    ("it%27s", "quote"),
    ("back%5Cslash", "backslash"),
    ("a%2Cb", "character ','"),
    ("a+b", "whitespace"),
    ("a%0Ab", "control character"),
    ("caf%C3%A9", "non-ASCII"),
    ("-rf", "start with '-'"),
    ("x" * 300, "too long"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("raw", "reason"), BAD_CIDS, ids=[b[1] for b in BAD_CIDS])
def test_bad_cids_get_400_with_reason(svc: ServiceThread, api: kit.Api, raw: str, reason: str) -> None:
    before = kit.revisions(svc)
    for method, verb in (("GET", "exists"), ("GET", "update"), ("GET", "status"), ("POST", "publish")):
        r = api.request(method, verb, raw, body=b"x" * 100 if verb == "publish" else None)
        assert r.status == 400, (verb, r.text)
        assert r.text.startswith("Bad request: ") and reason in r.text
        assert r.text.endswith("\n") and r.text.count("\n") == 1
    assert kit.revisions(svc) == before
    assert kit.spool_files(svc.service.config.spool_dir) == []


@pytest.mark.timeout(30)
def test_missing_cid(api: kit.Api) -> None:
    for verb in ("exists", "update"):
        r = api.get(verb)
        assert (r.status, r.text) == (400, f"Bad request: {verb} with no cid\n")
    assert api.get("exists", "").text == "Bad request: exists with no cid\n"
    assert api.get("status", "").text == "Bad request: status with no cid\n"  # status alone: the service's
    assert api.publish("", b"x").text == "Bad request: publish with no cid\n"


@pytest.mark.timeout(30)
def test_content_must_match_a_hash_cid(svc: ServiceThread, api: kit.Api) -> None:
    data = kit.tarball(seed="mismatch")
    wrong = "dune/" + hashlib.sha256(b"something else").hexdigest()
    r = api.publish(wrong, data)
    assert r.status == 400 and "does not match cid" in r.text
    assert api.get("status", wrong).status == 404
    assert kit.spool_files(svc.service.config.spool_dir) == []
    sha1_cid = "dune/" + hashlib.sha1(data).hexdigest()  # justIN's sha1 CIDs work too
    assert api.publish(sha1_cid, data).text == "OK\n"
    assert api.wait_status(sha1_cid).text.startswith("PUBLISHED:")


@pytest.mark.timeout(60)
def test_concurrent_uploads_of_one_cid_publish_once(svc: ServiceThread) -> None:
    data = kit.tarball({"f.bin": bytes(range(256)) * 4096}, seed="dup")  # ~1 MB
    cid = kit.cid_of(data)
    half = len(data) // 2
    socks = [kit.start_upload(svc.url, cid, len(data)) for _ in range(5)]
    for s in socks:  # all five are receiving at once
        s.sendall(data[:half])
    time.sleep(0.2)
    answers: list[bytes] = []

    def finish(s: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a duplicate may be answered without its body being read
            s.sendall(data[half:])
        answers.append(kit.read_until_closed(s))

    threads = [threading.Thread(target=finish, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 5
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"\r\n\r\nOK\n") for a in answers), answers
    api = kit.Api(svc.url)
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert len(records_for(svc, cid)) == 1
    assert kit.wait_until(lambda: kit.spool_files(svc.service.config.spool_dir) == [])
    api.close()


@pytest.mark.timeout(60)
def test_failed_cid_can_be_uploaded_again(svc: ServiceThread, api: kit.Api) -> None:
    cid = "dune/retry-after-failure"  # not a hash: any content may be sent under it
    before = kit.revisions(svc)
    assert api.publish(cid, b"this is not a tarball" * 100).text == "OK\n"
    st = api.wait_status(cid)
    assert st.text.startswith("FAILED:") and st.text.count("\n") == 1
    j = api.get("status", cid, headers={"Accept": "application/json"}).json()
    assert j["state"] == "failed" and j["reason"] and j["repository"] in REPOS
    assert kit.revisions(svc) == before
    assert api.get("exists", cid).text == "MISSING\n"
    good = kit.tarball(seed="second try")
    assert api.publish(cid, good).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert api.get("exists", cid).text.startswith("PRESENT:")


@pytest.mark.timeout(60)
def test_repositories_publish_in_parallel(svc: ServiceThread, api: kit.Api) -> None:
    slots = {s.name: s for s in svc.service.slots}
    first = kit.tarball(seed="parallel-1")
    second = kit.tarball(seed="parallel-2")
    svc.service.queue.idle(10)
    with slots[REPOS[0]].lock, slots[REPOS[1]].lock:
        api.publish(kit.cid_of(first), first)
        # both workers took a job: the first repository is busy, the second takes the next one
        assert kit.wait_until(lambda: api.get("status", kit.cid_of(first)).text == "PUBLISHING\n")
        api.publish(kit.cid_of(second), second)
        assert kit.wait_until(lambda: api.get("status", kit.cid_of(second)).text == "PUBLISHING\n")
        assert svc.service.queue.queued() == 0
        jobs = {
            api.get("status", kit.cid_of(d), headers={"Accept": "application/json"}).json()["repository"]
            for d in (first, second)
        }
        assert jobs == set(REPOS)
    for d in (first, second):
        assert api.wait_status(kit.cid_of(d)).text.startswith("PUBLISHED:")


@pytest.mark.timeout(60)
def test_cleaning_repository_leaves_publishing_to_the_others(svc: ServiceThread, api: kit.Api) -> None:
    busy = svc.service.slots[0]
    svc.service.queue.idle(10)
    busy.cleaning = True
    try:
        cids = []
        for i in range(3):
            data = kit.tarball(seed=f"while-cleaning-{i}")
            cids.append(kit.cid_of(data))
            assert api.publish(cids[-1], data).text == "OK\n"
        for c in cids:
            assert api.wait_status(c).text.startswith(f"PUBLISHED:/cvmfs/{REPOS[1]}/")
    finally:
        busy.cleaning = False
        svc.service.queue.wake()


@pytest.mark.timeout(30)
def test_status_queued_while_all_repositories_are_busy(svc: ServiceThread, api: kit.Api) -> None:
    svc.service.queue.idle(10)
    for s in svc.service.slots:
        s.cleaning = True
    try:
        data = kit.tarball(seed="queued")
        cid = kit.cid_of(data)
        assert api.publish(cid, data).text == "OK\n"
        assert api.get("status", cid).text == "QUEUED\n"
        assert api.get("status", cid, headers={"Accept": "application/json"}).json()["state"] == "queued"
        assert api.get("exists", cid).text == "MISSING\n"
        # a second upload of a queued CID is swallowed
        assert api.publish(cid, data).text == "OK\n"
        assert svc.service.queue.queued() == 1
    finally:
        for s in svc.service.slots:
            s.cleaning = False
        svc.service.queue.wake()
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert len(records_for(svc, cid)) == 1


@pytest.mark.timeout(30)
def test_long_cids_fit_the_spool(svc: ServiceThread, api: kit.Api) -> None:
    # every character of these CIDs is allowed; their spool and status file names must still fit
    for cid in ("dune/" + "@" * 235, "a" * 240, "x=/" + "=" * 237):
        assert len(cid) == 240
        assert api.publish(cid, b"not a tarball").text == "OK\n"
        st = api.wait_status(cid)
        assert st.text.startswith("FAILED:"), st.text
        assert api.publish(cid, kit.tarball(seed=cid)).text == "OK\n"
        assert api.wait_status(cid).text.startswith("PUBLISHED:")
    r = api.get("exists", "dune/" + "a" * 236)
    assert r.status == 400 and "too long" in r.text


@pytest.mark.timeout(60)
def test_repository_locked_by_another_writer(
    svc: ServiceThread, api: kit.Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. an admin running a repository command: the publish waits for it, within limits
    svc.service.queue.idle(10)
    for s in svc.service.slots[1:]:
        s.cleaning = True  # everything goes to the first repository
    first = svc.service.slots[0]
    try:
        lock = first.s0.lock().acquire()
        data = kit.tarball(seed="waits for the lock")
        assert api.publish(kit.cid_of(data), data).text == "OK\n"
        assert kit.wait_until(lambda: api.get("status", kit.cid_of(data)).text == "PUBLISHING\n")
        time.sleep(0.5)
        lock.release()
        assert api.wait_status(kit.cid_of(data)).text.startswith(f"PUBLISHED:/cvmfs/{first.name}/")

        monkeypatch.setattr("rcds.service.publisher.LOCK_WAIT", 0.3)
        lock = first.s0.lock().acquire()
        data = kit.tarball(seed="gives up")
        assert api.publish(kit.cid_of(data), data).text == "OK\n"
        st = api.wait_status(kit.cid_of(data))
        lock.release()
        assert st.text.startswith("FAILED:") and "another writer" in st.text
        assert api.publish(kit.cid_of(data), data).text == "OK\n"  # and it can be sent again
        assert api.wait_status(kit.cid_of(data)).text.startswith("PUBLISHED:")
    finally:
        for s in svc.service.slots[1:]:
            s.cleaning = False
        svc.service.queue.wake()


@pytest.mark.timeout(30)
def test_unexpected_errors_are_one_line_500s(
    svc: ServiceThread, api: kit.Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(cid: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(svc.service, "exists", broken)
    r = api.get("exists", "dune/x")
    assert (r.status, r.text) == (500, "internal server error; the server log has the details\n")
    assert api.get("exists", "dune/x", headers={"Accept": "application/json"}).json()["status"] == 500


@pytest.mark.timeout(60)
def test_stamps_are_written_in_batches(svc: ServiceThread, api: kit.Api) -> None:
    from rcds.service.repo_reader import published, stamp_times

    cids = []
    for i in range(6):
        data = kit.tarball(seed=f"batch {i}")
        cids.append(kit.cid_of(data))
        api.publish(cids[-1], data)
    for c in cids:
        assert api.wait_status(c).text.startswith("PUBLISHED:")
    svc.service.stamps.flush()
    before = kit.revisions(svc)
    time.sleep(1.1)  # stamps have whole seconds: a use in the second of the publish changes nothing
    t0 = time.time()
    for _ in range(5):
        for c in cids:
            assert api.get("update", c).text.startswith("PRESENT:")
    assert kit.revisions(svc) == before  # 30 touches, no revision yet
    written = svc.service.stamps.flush()
    after = kit.revisions(svc)
    holders = {svc.service.presence.where(c) for c in cids}
    assert written == len(holders)
    assert {n for n in after if after[n] != before[n]} == holders
    assert all(after[n] == before[n] + 1 for n in holders)  # one revision per repository
    for slot in svc.service.slots:
        stamps = stamp_times(slot.public, published(slot.public), "ts")  # type: ignore[arg-type]
        for c in cids:
            if svc.service.presence.where(c) == slot.name:
                assert stamps[c] >= int(t0)  # /ts/<cid>, its mtime the last use
