"""Hostile input through the API: the engine's bad-tarball corpus, oversized, truncated and
abandoned uploads.  Each gets its clear error, nothing is published, the spool is clean after."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from rcds.service.runner import ServiceThread
from rcds.testing.hostile_tars import BOMB_MAX_BYTES, CASES, HostileCase

import servicekit as kit

REPOS = ("user1.example.org", "user2.example.org")
LIMIT = 1 << 20  # max_upload_size of the size-limit tests


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    cfg = kit.config(
        tmp_path_factory.mktemp("hostile"),
        repositories=REPOS,
        extra=f"max_unpacked_size = {BOMB_MAX_BYTES}",
        # no stamp flush (a revision of its own) between a case's "before" and "after" reads
        tables="[stamps]\nflush_interval = 3600",
    )
    with ServiceThread(cfg) as st:
        yield st


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    cfg = kit.config(tmp_path_factory.mktemp("small"), repositories=REPOS, extra='max_upload_size = "1MiB"')
    with ServiceThread(cfg) as st:
        yield st


def spool_clean(svc: ServiceThread) -> bool:
    return kit.wait_until(lambda: kit.spool_files(svc.service.config.spool_dir) == [], timeout=10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_tarball_corpus(svc: ServiceThread, case: HostileCase) -> None:
    api = kit.Api(svc.url)
    data = case.build()
    cid = kit.cid_of(data)
    svc.service.stamps.flush()  # the stamps of earlier cases now, not in the middle of this one
    before = kit.revisions(svc)
    r = api.publish(cid, data)
    if api.get("exists", cid).text.startswith("PRESENT:"):  # a sanitize case published already
        assert case.policy == "sanitize"
        return
    assert (r.status, r.text) == (200, "OK\n")
    st = api.wait_status(cid, timeout=100)
    if case.policy == "sanitize":
        assert st.text.startswith("PUBLISHED:"), st.text
        assert api.get("exists", cid).text.startswith("PRESENT:")
    else:
        assert st.text.startswith("FAILED:"), st.text
        assert st.text.count("\n") == 1
        if case.member is not None:
            assert case.member in st.text
        assert kit.revisions(svc) == before  # the repositories' manifests are unchanged
        assert api.get("exists", cid).text == "MISSING\n"
    assert spool_clean(svc)
    api.close()


def _headers(cid: str, extra: str) -> bytes:
    return (f"POST /pubapi/publish?cid={cid} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").encode()


def _read_response(s: socket.socket) -> bytes:
    """One HTTP response, read by its Content-Length (without waiting for the connection to close)."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    head = out.split(b"\r\n\r\n", 1)[0].decode()
    length = next(
        int(h.split(":", 1)[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")
    )
    while len(out) < len(head) + 4 + length:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.timeout(60)
def test_oversized_upload_is_refused_before_its_body(small: ServiceThread) -> None:
    cid = "dune/too-big"
    s = kit.connect(small.url)
    s.sendall(_headers(cid, f"Content-Length: {2 * LIMIT}\r\n"))  # and no body at all
    t0 = time.monotonic()
    answer = _read_response(s)
    assert time.monotonic() - t0 < 5
    s.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.endswith(f"upload of {2 * LIMIT} bytes exceeds the maximum of {LIMIT} bytes\n".encode())
    api = kit.Api(small.url)
    assert api.get("status", cid).status == 404
    # the same through a client that sends the body anyway
    r = api.publish(cid, b"\0" * 2 * LIMIT, headers={"Accept": "application/json"})
    assert r.status == 413 and "exceeds the maximum" in r.json()["error"]
    assert spool_clean(small)
    api.close()


@pytest.mark.timeout(60)
def test_oversized_chunked_upload_is_refused_while_streaming(small: ServiceThread) -> None:
    cid = "dune/too-big-chunked"
    before = kit.revisions(small)
    s = kit.connect(small.url)
    s.sendall(_headers(cid, "Transfer-Encoding: chunked\r\n"))
    block = b"\1" * 65536
    try:
        for _ in range(2 * LIMIT // len(block)):
            s.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close as soon as it refuses
    answer = kit.read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"exceeds the maximum" in answer
    assert spool_clean(small)
    assert kit.revisions(small) == before
    api = kit.Api(small.url)
    assert api.get("status", cid).status == 404
    # a chunked upload within the limit works
    data = kit.tarball(seed="chunked")
    good = kit.cid_of(data)
    s = kit.connect(small.url)
    s.sendall(_headers(good, "Transfer-Encoding: chunked\r\nConnection: close\r\n"))
    for i in range(0, len(data), 1000):
        part = data[i : i + 1000]
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    s.sendall(b"0\r\n\r\n")
    assert kit.read_until_closed(s).endswith(b"\r\n\r\nOK\n")
    assert api.wait_status(good).text.startswith("PUBLISHED:")
    api.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["close", "half-close"])
def test_interrupted_upload_leaves_nothing(svc: ServiceThread, how: str) -> None:
    data = kit.tarball({"big.bin": bytes(range(256)) * 40000}, seed=how, compression="none")  # ~10 MB
    cid = kit.cid_of(data)
    before = kit.revisions(svc)
    s = kit.connect(svc.url)
    s.sendall(_headers(cid, f"Content-Length: {len(data)}\r\n"))
    s.sendall(data[: len(data) // 2])
    incoming = svc.service.config.spool_dir / "incoming"
    assert kit.wait_until(lambda: any(incoming.iterdir()))  # the upload is being received
    if how == "close":
        s.close()
    else:  # the client says it is done sending: the upload is truncated
        s.shutdown(socket.SHUT_WR)
        answer = kit.read_until_closed(s)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    assert spool_clean(svc)
    api = kit.Api(svc.url)
    assert kit.wait_until(lambda: api.get("status", cid).status == 404)  # not stuck in "receiving"
    assert kit.revisions(svc) == before
    # the full upload works afterwards
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    api.close()


@pytest.mark.timeout(60)
def test_disconnect_while_queued_upload_is_swallowed(svc: ServiceThread) -> None:
    # a duplicate upload abandoned half way changes nothing for the first one
    data = kit.tarball({"f.bin": b"x" * 500_000}, seed="dup-abandon", compression="none")
    cid = kit.cid_of(data)
    first = kit.connect(svc.url)
    first.sendall(_headers(cid, f"Content-Length: {len(data)}\r\nConnection: close\r\n"))
    first.sendall(data[:1000])
    time.sleep(0.1)
    second = kit.connect(svc.url)
    second.sendall(_headers(cid, f"Content-Length: {len(data)}\r\n"))
    second.sendall(data[:1000])
    second.close()
    first.sendall(data[1000:])
    assert kit.read_until_closed(first).endswith(b"\r\n\r\nOK\n")
    api = kit.Api(svc.url)
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert spool_clean(svc)
    api.close()


@pytest.mark.timeout(60)
def test_stalled_upload_is_dropped_and_frees_its_cid(
    svc: ServiceThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rcds.service.api.publish.IDLE_TIMEOUT", 0.5)
    data = kit.tarball(seed="stalled")
    cid = kit.cid_of(data)
    s = kit.connect(svc.url)
    s.sendall(_headers(cid, f"Content-Length: {len(data)}\r\n"))
    s.sendall(data[:100])  # and then nothing
    answer = _read_response(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b"no data for 0.5 s after 100 bytes; send it again\n")
    assert spool_clean(svc)
    api = kit.Api(svc.url)
    assert api.get("status", cid).status == 404
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    api.close()
