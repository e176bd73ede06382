"""S3Store specifics on a real SeaweedFS: multipart, retries on 5xx, errors, credentials never shown."""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rcds.errors import ConfigError, NotFoundError, StorageError
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.storage.locate import open_store
from rcds.storage.s3 import S3Store
from rcds.storage.s3client import S3Location
from rcds.testing.seaweedfs import SeaweedFS

pytestmark = pytest.mark.timeout(120)
MIB = 1 << 20


def _loc(url: str, **kw: str) -> S3Location:
    return S3Location.parse(url, **kw)


def test_large_objects_go_up_in_parts(s3_url: str, tmp_path: Path) -> None:
    store = S3Store(_loc(s3_url), part_size=5 * MIB, multipart_threshold=5 * MIB)
    blob = os.urandom(12 * MIB + 123)
    name = ContentHash.of(blob).object_name(ObjectKind.CATALOG)
    store.put(name, blob)
    assert store.get(name) == blob
    assert store.size(name) == len(blob)
    head = store._client.head_object(Bucket=store.loc.bucket, Key=store.loc.key(name))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    with store.open(name) as f:  # larger than the in-memory spool: a temp file
        assert f.read() == blob
    src = tmp_path / "big"
    src.write_bytes(blob[::-1])
    other = ContentHash.of(blob[::-1]).object_name(ObjectKind.PARTIAL)
    store.put_file(other, src)
    assert not src.exists()
    assert store.get(other) == blob[::-1]
    assert sorted(store.list_objects()) == sorted([name, other])
    assert store.clean_temp() == 0  # completed uploads leave nothing behind


def test_put_if_absent(s3_url: str) -> None:
    store = S3Store(_loc(s3_url))
    big = os.urandom(64 << 10)
    name = ContentHash.of(big).object_name()
    assert store.put_if_absent(name, big) is True
    assert store.put_if_absent(name, bytes(len(big))) is False  # a HEAD found it: not rewritten
    assert store.get(name) == big
    small = b"x" * 1000
    small_name = ContentHash.of(small).object_name()
    assert store.put_if_absent(small_name, small) is True
    assert store.put_if_absent(small_name, small) is False  # never written again, small or not
    assert store.get(small_name) == small
    head = store._client.head_object(Bucket=store.loc.bucket, Key=store.loc.key(small_name))
    assert "-" not in head["ETag"]  # one plain PUT
    assert head["CacheControl"] == "public, max-age=259200"
    assert store.put_if_absent(".cvmfswhitelist", b"w") is True  # root files: always checked
    assert store.put_if_absent(".cvmfswhitelist", b"x") is False
    assert store.get(".cvmfswhitelist") == b"w"
    # an empty object (an upload cut off by a crash) counts as absent and is written again
    store._client.put_object(Bucket=store.loc.bucket, Key=store.loc.key(name), Body=b"")
    assert not store.has(name)
    assert store.put_if_absent(name, big) is True
    assert store.get(name) == big
    head = store._client.head_object(Bucket=store.loc.bucket, Key=store.loc.key(".cvmfswhitelist"))
    assert head["CacheControl"] == "max-age=61"


def test_locations_are_checked() -> None:
    assert _loc("s3://bucket/a/b/").key("data/00/x") == "a/b/data/00/x"
    assert _loc("s3://bucket").key(".cvmfspublished") == ".cvmfspublished"
    for bad in ("s3://ab/x", "s3://Bucket/x", "http://bucket/x", "s3://bucket/a//b", "s3://bucket/a/../b"):
        with pytest.raises(ConfigError):
            _loc(bad)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        _loc("s3://key:secret@bucket/x")
    with pytest.raises(ConfigError, match="endpoint"):
        _loc("s3://bucket/x", endpoint="ftp://host")


def test_a_missing_bucket_is_a_clear_error(s3_env: SeaweedFS) -> None:
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket' does not exist.*create it"):
        open_store("s3://no-such-bucket/x")


def test_wrong_credentials_are_a_clear_error(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ConfigError, match=r"access denied.*check the S3 credentials"):
        open_store(s3_url).put(".cvmfspublished", b"x")


def test_an_unreachable_endpoint_is_a_clear_error(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("RCDS_S3_ATTEMPTS", "2")
    start = time.monotonic()
    with pytest.raises(StorageError, match="check that the object store is up") as info:
        open_store(s3_url)
    assert "127.0.0.1:9" in str(info.value)
    assert time.monotonic() - start < 60


# -- retries: a loopback proxy in front of SeaweedFS answers 503 SlowDown to the first attempts ------


class _FaultyProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.fail_first = 0
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _FaultyProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = f"{self.command} {self.path}"
        with self.server.lock:
            n = self.server.attempts[key] = self.server.attempts.get(key, 0) + 1
        if self.command == "PUT" and n <= self.server.fail_first:
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        up = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=30)
        try:
            up.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            r = up.getresponse()
            data = r.read()
        finally:
            up.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 - http.server names


@pytest.fixture
def faulty(s3_env: SeaweedFS) -> Iterator[_FaultyProxy]:
    proxy = _FaultyProxy(s3_env.endpoint)
    t = threading.Thread(target=proxy.serve_forever, daemon=True)
    t.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    t.join(10)


def test_throttling_is_retried_with_backoff(s3_url: str, faulty: _FaultyProxy) -> None:
    store = S3Store(_loc(s3_url, endpoint=faulty.url))
    faulty.fail_first = 2
    start = time.monotonic()
    store.put(".cvmfspublished", b"after two 503s")
    assert time.monotonic() - start > 0.05  # it waited between attempts
    assert store.get(".cvmfspublished") == b"after two 503s"
    puts = [n for k, n in faulty.attempts.items() if k.startswith("PUT ")]
    assert puts == [3]


def test_a_store_that_keeps_failing_gives_up_with_a_clear_error(
    s3_url: str, faulty: _FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default (6) waits up to ~30 s in all; 2: one retry (up to 1 s of backoff), then it gives up
    monkeypatch.setenv("RCDS_S3_ATTEMPTS", "2")
    store = S3Store(_loc(s3_url, endpoint=faulty.url))
    faulty.fail_first = 1000
    with pytest.raises(StorageError, match=r"503 SlowDown after 2 attempts"):
        store.put(".cvmfspublished", b"never")
    assert [n for k, n in faulty.attempts.items() if k.startswith("PUT ")] == [2]
    with pytest.raises(NotFoundError):
        store.get(".cvmfspublished")


# -- credentials never appear in logs or messages ----------------------------------------------------


def test_credentials_are_never_logged(
    s3_url: str, s3_env: SeaweedFS, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    from rcds.cli.main import main

    caplog.set_level(logging.DEBUG)  # every logger, botocore's and urllib3's included
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"payload\n")
    root = str(tmp_path / "r")
    codes = [
        main(["repo", "create", "c.example.org", "--root", root, "--storage", s3_url]),
        main(["repo", "ingest", "c.example.org", "--root", root, "--dir", str(src), "--path", "/sw/a"]),
        main(["repo", "verify", "c.example.org", "--root", root]),
        main(["repo", "gc", "c.example.org", "--root", root]),
    ]
    assert codes == [0, 0, 0, 0]
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3_env.secret_key[::-1]  # wrong: an error is reported
    assert main(["repo", "info", "c.example.org", "--root", root]) != 0
    out = capsys.readouterr()
    assert "access denied" in out.err
    text = caplog.text + out.out + out.err
    assert len(caplog.records) > 20  # botocore did log at debug level
    assert s3_env.secret_key not in text
    assert s3_env.secret_key[::-1] not in text
    assert s3_env.access_key not in text
    assert s3_env.secret_key not in Path(root, "repo.json").read_text()
