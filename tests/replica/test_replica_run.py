"""``rcds replica run --config``: a stratum 1 process that pulls and serves with stock cache headers."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from rcds.errors import ConfigError
from rcds.format.hashes import ObjectKind
from rcds.publish.stratum0 import Stratum0
from rcds.replica.runconfig import load_run_config
from rcds.serve.http import make_server

from replkit import cid_entries, get, key_file, replica_add, replica_config, replica_run
from testkit import publish

pytestmark = pytest.mark.timeout(90)


def test_run_pulls_serves_with_stock_headers_and_follows_new_revisions(
    repo: Stratum0, tmp_path: Path
) -> None:
    publish(repo, cid_entries("a"), "/sw/g/a")
    fqrn = repo.name
    with make_server({fqrn: repo.layout.public}) as upstream:
        upstream.start_background()
        cfg = replica_config(
            tmp_path / "replica.toml",
            fqrn,
            upstream.url_for(fqrn),
            key_file(repo),
            interval=0.5,
            sections="[serve]\nport = 0\n\n",
        )
        with replica_run(cfg, stop_within=20) as lines:
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


def test_sighup_pulls_at_once_without_waiting_for_the_interval(repo: Stratum0, tmp_path: Path) -> None:
    publish(repo, cid_entries("a"), "/sw/g/a")
    fqrn = repo.name
    with make_server({fqrn: repo.layout.public}) as upstream:
        upstream.start_background()
        root = tmp_path / "s1"
        cfg = tmp_path / "replica.toml"
        cfg.write_text("[replica]\nroot = 's1'\ninterval = 3600\n")  # no [serve]: pulling only
        replica_add(root, fqrn, upstream.url_for(fqrn), key_file(repo))
        with replica_run(cfg, stop_within=20) as lines:
            lines.wait_for(rf"{re.escape(fqrn)}: revision {repo.manifest().revision}:")
            new = publish(repo, cid_entries("b"), "/sw/g/b")
            lines.proc.send_signal(signal.SIGHUP)
            lines.wait_for(rf"{re.escape(fqrn)}: revision {new}: 2 catalogs", timeout=20)


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
