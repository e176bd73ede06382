"""The sample nginx configuration (examples/nginx/rcds-replica.conf) in front of a real replica.

nginx runs on loopback from the sample (only its listen address and root changed); the test
checks the stock cache headers, that nothing but repository files is served, and that a client
verifies the whole repository through nginx and through the sample Squid in front of it.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.format import manifest
from rcds.format.hashes import ObjectKind
from rcds.format.keys import load_public_key_file
from rcds.net.fetcher import Fetcher
from rcds.net.proxies import ProxyConfig
from rcds.replica.registry import add_replica
from rcds.replica.replicator import Replicator
from rcds.repo.http_source import HttpSource
from rcds.repo.verify import verify_repository
from rcds.serve.http import make_server
from rcds.testing.nginx import NGINX, loopback_site, run_nginx
from rcds.testing.processes import free_port, stop_process
from rcds.testing.squid import SQUID, Squid

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STOCK = Path("/work/shared/fixtures/stock-cvmfs")
FQRN = "stock.example.org"


@contextlib.contextmanager
def nginx(srv: Path, work: Path) -> Iterator[int]:
    """nginx serving ``srv`` (which holds ``cvmfs/<fqrn>``) from the sample server block."""
    port = free_port()
    site = loopback_site((EXAMPLES / "nginx" / "rcds-replica.conf").read_text(), port, srv)
    proc = run_nginx(site, port, work)
    try:
        yield port
    finally:
        stop_process(proc)


def head(port: int, path: str) -> tuple[int, list[tuple[str, str]]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, [(k.lower(), v) for k, v in resp.getheaders()]
    finally:
        conn.close()


def test_nginx_sample_serves_a_replica_with_stock_headers(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    # A replica made by rcds from the stock fixture (copied into the layout nginx serves).
    upstream = tmp_path / "upstream"
    shutil.copytree(STOCK / FQRN, upstream)
    with make_server({FQRN: upstream}) as s0:
        s0.start_background()
        entry = add_replica(srv / "cvmfs", FQRN, s0.url_for(FQRN), STOCK / f"{FQRN}.pub")
        Replicator(workers=4).pull(entry.spec())
    work = tmp_path / "nginx"
    work.mkdir()
    with nginx(srv, work) as port:
        base = f"/cvmfs/{FQRN}"
        for name in (".cvmfspublished", ".cvmfswhitelist", ".cvmfs_last_snapshot"):
            status, headers = head(port, f"{base}/{name}")
            h = dict(headers)
            assert status == 200, name
            assert [v for k, v in headers if k == "cache-control"] == ["max-age=61"]
            assert h["content-type"] == "application/x-cvmfs" and "expires" in h and "etag" not in h
        published = (srv / "cvmfs" / FQRN / ".cvmfspublished").read_bytes()
        obj = manifest.parse(published).manifest.certificate.object_name(ObjectKind.CERTIFICATE)
        status, headers = head(port, f"{base}/{obj}")
        assert status == 200
        assert [v for k, v in headers if k == "cache-control"] == ["public, max-age=259200, immutable"]
        assert dict(headers)["content-type"] == "application/octet-stream" and "etag" not in dict(headers)
        for private in (".rcds-replica.toml", ".rcds-replica.pub", ".rcds-roots", "data/txn", "data/", ""):
            assert head(port, f"{base}/{private}")[0] == 404, private
        status, headers = head(port, f"{base}/data/00/{'0' * 38}")
        assert status == 404 and "cache-control" not in dict(headers)

        key = load_public_key_file(STOCK / f"{FQRN}.pub")
        direct = HttpSource.for_url(f"http://127.0.0.1:{port}{base}")
        try:
            report = verify_repository(direct, FQRN, [key])
        finally:
            direct.close()
        assert (report.revision, report.catalogs) == (2, 3)
        if SQUID is None:
            return
        with Squid.from_file(EXAMPLES / "squid" / "site-squid.conf") as squid:
            proxied = HttpSource(Fetcher([f"http://127.0.0.1:{port}{base}"], ProxyConfig.parse(squid.url)))
            try:
                assert verify_repository(proxied, FQRN, [key]).objects == report.objects
            finally:
                proxied.close()
            # The manifest (61 s) and objects are cached by the sample Squid: ask again, all hits.
            lines_before = len(squid.log_lines())
            again = HttpSource(Fetcher([f"http://127.0.0.1:{port}{base}"], ProxyConfig.parse(squid.url)))
            try:
                verify_repository(again, FQRN, [key])
            finally:
                again.close()
            time.sleep(0.3)
            second = squid.log_lines()[lines_before:]
            assert second and all(
                "HIT" in line for line in second if "/data/" in line or "cvmfspublished" in line
            )
