"""rcds.testing.nginx: the sample server block on loopback, and a clear error when nginx cannot start."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from rcds.testing.nginx import NGINX, loopback_site, run_nginx
from rcds.testing.processes import free_port, stop_process

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

SAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "nginx" / "rcds-replica.conf").read_text()


def test_the_sample_site_listens_on_loopback_only_with_extra_locations(tmp_path: Path) -> None:
    site = loopback_site(SAMPLE, 8123, tmp_path, "    location = /x { return 204; }\n")
    assert "listen 127.0.0.1:8123;" in site and "[::]" not in site and "listen 80;" not in site
    assert f"root {tmp_path};" in site
    assert site.rstrip().endswith("location = /x { return 204; }\n}")


def test_serves_a_file_from_the_root_and_stops(tmp_path: Path) -> None:
    (tmp_path / "srv" / "cvmfs" / "a.example.org").mkdir(parents=True)
    (tmp_path / "srv" / "cvmfs" / "a.example.org" / ".cvmfspublished").write_bytes(b"manifest")
    port = free_port()
    proc = run_nginx(loopback_site(SAMPLE, port, tmp_path / "srv"), port, tmp_path / "work")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/cvmfs/a.example.org/.cvmfspublished")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"manifest")
        conn.close()
    finally:
        stop_process(proc)
    assert proc.returncode is not None
    assert (tmp_path / "work" / "access.log").read_text().count(".cvmfspublished") == 1


def test_a_broken_configuration_is_an_error_with_the_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"nginx did not start(.|\n)*no_such_directive"):
        run_nginx("server { no_such_directive on; }\n", free_port(), tmp_path / "work")
