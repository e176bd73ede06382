"""``rcds replica run --config``: a stratum 1 process that pulls and serves with stock cache headers."""

from __future__ import annotations

import http.client
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rcds.errors import ConfigError
from rcds.format.hashes import ObjectKind
from rcds.publish.stratum0 import Stratum0
from rcds.replica.runconfig import load_run_config
from rcds.serve.http import make_server

from replkit import RCDS, cid_entries, key_file
from testkit import publish

pytestmark = pytest.mark.timeout(90)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Lines:
    """The stdout of a process, line by line, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [self.q.put(line) for line in out], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s") from None
            m = re.search(pattern, line)
            if m:
                return m


def test_run_pulls_serves_with_stock_headers_and_follows_new_revisions(
    repo: Stratum0, tmp_path: Path
) -> None:
    publish(repo, cid_entries("a"), "/sw/g/a")
    fqrn = repo.name
    with make_server({fqrn: repo.layout.public}) as upstream:
        upstream.start_background()
        cfg = tmp_path / "replica.toml"
        cfg.write_text(
            "[replica]\nroot = 's1'\ninterval = 0.5\n\n[serve]\nport = 0\n\n"
            f"[[repository]]\nname = '{fqrn}'\nupstream = '{upstream.url_for(fqrn)}'\n"
            f"key = '{key_file(repo)}'\n"
        )
        proc = subprocess.Popen(
            [*RCDS, "replica", "run", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = Lines(proc)
            port = int(lines.wait_for(r"serving at http://127\.0\.0\.1:(\d+)/cvmfs/").group(1))
            lines.wait_for(rf"{re.escape(fqrn)}: revision {repo.manifest().revision}:")

            base = f"/cvmfs/{fqrn}"
            for name in (
                ".cvmfspublished",
                ".cvmfswhitelist",
                ".cvmfs_last_snapshot",
                ".cvmfs_master_replica",
            ):
                status, headers, _ = get(port, f"{base}/{name}")
                assert status == 200, name
                assert headers["cache-control"] == "max-age=61", name
                assert headers["content-type"] == "application/x-cvmfs"
                assert "expires" in headers and "last-modified" not in headers and "etag" not in headers
            cert = repo.manifest().certificate.object_name(ObjectKind.CERTIFICATE)
            status, headers, body = get(port, f"{base}/{cert}")
            assert status == 200 and body == (repo.layout.public / cert).read_bytes()
            assert headers["cache-control"] == "public, max-age=259200, immutable"
            assert headers["content-type"] == "application/octet-stream"
            assert "last-modified" not in headers and "etag" not in headers
            # The replica's own settings are never served.
            for private in (".rcds-replica.toml", ".rcds-replica.pub", ".rcds-roots"):
                assert get(port, f"{base}/{private}")[0] == 404

            new = publish(repo, cid_entries("b"), "/sw/g/b")
            lines.wait_for(rf"{re.escape(fqrn)}: revision {new}: 2 catalogs")
            status, _, body = get(port, f"{base}/.cvmfspublished")
            assert body == (repo.layout.public / ".cvmfspublished").read_bytes()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


def test_sighup_pulls_at_once_without_waiting_for_the_interval(repo: Stratum0, tmp_path: Path) -> None:
    publish(repo, cid_entries("a"), "/sw/g/a")
    fqrn = repo.name
    with make_server({fqrn: repo.layout.public}) as upstream:
        upstream.start_background()
        root = tmp_path / "s1"
        cfg = tmp_path / "replica.toml"
        cfg.write_text("[replica]\nroot = 's1'\ninterval = 3600\n")  # no [serve]: pulling only
        add = [*RCDS, "replica", "add", fqrn, "--upstream", upstream.url_for(fqrn), "--root", str(root)]
        subprocess.run([*add, "--key", str(key_file(repo))], check=True, capture_output=True, timeout=60)
        proc = subprocess.Popen(
            [*RCDS, "replica", "run", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = Lines(proc)
            lines.wait_for(rf"{re.escape(fqrn)}: revision {repo.manifest().revision}:")
            new = publish(repo, cid_entries("b"), "/sw/g/b")
            proc.send_signal(signal.SIGHUP)
            lines.wait_for(rf"{re.escape(fqrn)}: revision {new}: 2 catalogs", timeout=20)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


def test_run_config_errors_name_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    for text, message in (
        ("", "a \\[replica\\] table"),
        ("[replica]\nroot = 'x'\ninterval = -1\n", "interval must be a positive number"),
        ("[replica]\nroot = 'x'\nworkers = 1.5\n", "workers must be a positive whole number"),
        ("[replica]\nroot = 'x'\nintervall = 3\n", "unknown setting\\(s\\) intervall"),
        ("[replica]\nroot = 'x'\n[serve]\nport = 70000\n", "port must be 0-65535"),
        ("[replica]\nroot = 'x'\n[[repository]]\nname = 'a.b'\n", "name, upstream and key"),
        ("[replica\n", "not valid TOML"),
    ):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_run_config(cfg)
    cfg.write_text(
        "[replica]\nroot = 's1'\n[[repository]]\nname='a.b'\nupstream='http://h/cvmfs/a.b'\nkey='k.pub'\n"
    )
    c = load_run_config(cfg)
    assert c.root == tmp_path / "s1" and c.repositories[0].key == tmp_path / "k.pub" and c.serve is None
