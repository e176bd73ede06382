"""``rcds publish`` and ``rcds wait`` through the command line, against a real service."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from rcds.cli.jobs import ProgressBar
from rcds.cli.main import main
from rcds.service.runner import ServiceThread

import jobkit

pytestmark = pytest.mark.timeout(120)
FAST = ["--retries", "2", "--backoff", "0.01"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``rcds ARGV``; return the exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def publish_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, "publish", *argv, "--json", *FAST)
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_publish_json_then_again(
    service: ServiceThread, code: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = publish_json(capsys, str(code), "--group", "dune", "--server", service.url, "--wait")
    assert set(first) >= {"cid", "path", "repository", "uploaded", "server"}
    assert first["uploaded"] is True and first["server"] == service.url + "/pubapi"
    assert first["path"] == f"/cvmfs/{first['repository']}/sw/{first['cid']}"
    again = publish_json(capsys, str(code), "--group", "dune", "--server", service.url)
    assert again["cid"] == first["cid"] and again["path"] == first["path"] and again["uploaded"] is False


def test_publish_human_output_without_progress_off_a_tty(
    service: ServiceThread, code: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(capsys, "publish", str(code), "-G", "dune", "--server", service.url, "--wait", *FAST)
    assert rc == 0, err
    assert out.startswith("cid:") and "path:     /cvmfs/" in out and "uploaded: yes" in out
    assert "\r" not in err  # no progress bar when stderr is not a terminal


def test_publish_fails_over_with_servers_from_the_environment(
    service: ServiceThread,
    code: Path,
    dead_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RCDS_SERVERS", f"{dead_url} {service.url}")
    monkeypatch.setenv("GROUP", "dune")
    data = publish_json(capsys, str(code), "--wait")
    assert data["server"] == service.url + "/pubapi" and data["path"]


def test_publish_all_dead_exits_with_network_error(code: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = [jobkit.dead_url(), jobkit.dead_url()]
    t0 = time.monotonic()
    rc, out, err = run(capsys, "publish", str(code), "-G", "dune", "--server", ",".join(dead), *FAST)
    assert rc == 6 and not out
    assert time.monotonic() - t0 < 10
    assert "failed after 6 tries" in err and all(d in err for d in dead)


def test_publish_bad_group_and_missing_options(
    code: Path, dead_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "publish", str(code), "--group", "../x", "--server", dead_url)
    assert rc == 2 and "group '../x' is not valid" in err
    rc, _, err = run(capsys, "publish", str(code), "--group", "dune", "--server", dead_url, "--wait-client")
    assert rc == 2 and "--wait-client needs --repo-url" in err


def test_publish_wait_client(
    service: ServiceThread, code: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [a for d in jobkit.key_dirs(service) for a in ("--key", str(d))]
    data = publish_json(
        capsys, str(code), "-G", "dune", "--server", service.url, "--wait-client",
        "--repo-url", jobkit.repo_url_template(service), *keys, "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert data["path"] and data["uploaded"] is True


def test_wait_on_a_fake_mount(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cvmfs"
    (root / "user1.example.org").mkdir(parents=True)
    cid = "dune/" + "d" * 64
    target = root / "user1.example.org" / "sw" / cid
    t = threading.Timer(0.5, lambda: target.mkdir(parents=True))
    t.start()
    link = tmp_path / "scratch" / "code"
    rc, out, err = run(
        capsys, "wait", cid, "--timeout", "30", "--link", str(link), "--repos", "user1.example.org",
        "--cvmfs-root", str(root), "--poll-max", "0.2",
    )  # fmt: skip
    t.join()
    assert rc == 0, err
    assert out.strip() == str(target)
    assert link.is_symlink() and link.resolve() == target.resolve()


def test_wait_timeout_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cvmfs"
    (root / "user1.example.org").mkdir(parents=True)
    monkeypatch.setenv("RCDS_REPOS", "user1.example.org,user2.example.org")
    cid = "dune/" + "e" * 64
    rc, out, err = run(
        capsys, "wait", cid, "--timeout", "0.5", "--cvmfs-root", str(root), "--poll-max", "0.1",
        "--config-dir", str(tmp_path / "etc"),
    )  # fmt: skip
    assert rc == 5 and not out
    assert cid in err and "did not appear within 0.5 s" in err
    assert str(root / "user1.example.org" / "sw" / cid) in err
    assert str(root / "user2.example.org") + ": not mounted, and no client access: no CVMFS_SERVER_URL" in err


def test_wait_through_the_client_library(
    service: ServiceThread, code: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = publish_json(capsys, str(code), "-G", "dune", "--server", service.url, "--wait")
    keys = [a for d in jobkit.key_dirs(service) for a in ("--key", str(d))]
    link = tmp_path / "scratch" / "code"
    rc, out, err = run(
        capsys, "wait", str(published["cid"]), "--timeout", "60", "--link", str(link),
        "--server", service.url, "--cvmfs-root", str(tmp_path / "no-cvmfs"),
        "--repo-url", jobkit.repo_url_template(service), *keys, "--cache", str(tmp_path / "cache"), "--json",
    )  # fmt: skip
    assert rc == 0, err
    data = json.loads(out)
    assert data["via"] == "client" and data["repository"] == published["repository"]
    assert data["linked"] == str(link)
    assert (link / "bin" / "run.sh").read_text().startswith("#!/bin/sh")


def test_progress_bar_draws_only_when_enabled() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, enabled=True)
    bar("upload", 512, 1024)
    bar("upload", 1024, 1024)
    bar.finish()
    text = stream.getvalue()
    assert " upload [" in text and "100%" in text and text.startswith("\r") and text.endswith("\n")
    quiet = io.StringIO()
    off = ProgressBar(quiet, enabled=False)
    off("upload", 1, 2)
    off.finish()
    assert quiet.getvalue() == ""
