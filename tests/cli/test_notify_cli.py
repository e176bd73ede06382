"""``rcds notify ...`` and ``rcds repo ingest/rm --notify`` as a user runs them: real processes, loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.format.notification import Activity
from rcds.notify.server import BrokerThread
from rcds.serve.http import make_server

from testkit import rcds

NAME = "notify.example.org"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("cli-notify") / NAME
    rcds("repo", "create", NAME, "--root", str(r))
    return r


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread() as b:
        yield b


def last_revision(b: BrokerThread) -> int | None:
    last = b.call(lambda: b.broker.last(NAME))
    return last.signed_manifest().manifest.revision if isinstance(last, Activity) else None


def ingest(root: Path, tmp_path: Path, name: str, notify: str) -> subprocess.CompletedProcess[str]:
    """``rcds repo ingest --notify`` of a directory with one file ``NAME.txt``, at ``/sw/NAME``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.txt").write_text(f"{name}\n")
    where = ["--root", str(root), "--dir", str(src), "--path", f"/sw/{name}"]
    return rcds("repo", "ingest", NAME, *where, "--notify", notify)


def test_ingest_and_rm_announce_their_revision(root: Path, broker: BrokerThread, tmp_path: Path) -> None:
    out = ingest(root, tmp_path, "a", broker.url)
    revision = int(out.stdout.split("as revision ")[1].split(":")[0])
    assert last_revision(broker) == revision
    assert last_revision(broker) is not None
    published = (root / "public" / ".cvmfspublished").read_bytes()
    last = broker.call(lambda: broker.broker.last(NAME))
    assert isinstance(last, Activity) and last.manifest == published
    # the environment names the broker too
    out = rcds("repo", "rm", NAME, "--root", str(root), "--path", "/sw/a", env={"RCDS_NOTIFY": broker.url})
    assert last_revision(broker) == revision + 1


def test_unreachable_broker_never_fails_the_publish(root: Path, tmp_path: Path) -> None:
    proc = ingest(root, tmp_path, "b", "http://127.0.0.1:9")
    assert "published /sw/b" in proc.stdout
    assert "notification of notify.example.org not delivered" in proc.stderr


def test_serve_publish_subscribe_commands(root: Path) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "rcds.cli.main", "notify", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert "broker at http://127.0.0.1:" in line, line + (serve.stderr.read() if serve.poll() else "")
        url = line.split("broker at ")[1].split("/notifications/")[0]
        out = rcds("notify", "publish", NAME, "--root", str(root), "--server", url)
        assert "announced notify.example.org revision" in out.stdout and "(0 subscribers)" in out.stdout
        revision = int(out.stdout.split("revision ")[1].split()[0])
        # the broker keeps the last message: a late subscriber gets it at once and stops
        sub = rcds("notify", "subscribe", NAME, "--server", url)
        assert sub.stdout.startswith(f"{NAME} is now at revision {revision}, root catalog ")
        # the manifest can also come from where the repository is served
        server = make_server({NAME: root / "public"})
        server.start_background()
        try:
            out = rcds("notify", "publish", NAME, "--repo-url", server.url_for(NAME), "--server", url)
            assert f"announced {NAME} revision {revision} to {url}" in out.stdout
        finally:
            server.stop()
        bad = rcds(
            "notify", "publish", "other.example.org", "--root", str(root), "--server", url, check=False
        )
        assert bad.returncode == 2 and "holds repository" in bad.stderr
    finally:
        serve.terminate()
        assert serve.wait(20) == 0
