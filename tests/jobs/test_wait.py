"""wait_for_code: a fake /cvmfs mount root, and the client library against a real service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rcds.errors import ConfigError, InputError
from rcds.jobs.pubapi_client import PubapiClient, RetryPolicy
from rcds.jobs.submit import prepare, publish_code
from rcds.jobs.wait import ClientAccess, PollPolicy, WaitTimeoutError, discover_repos, wait_for_code
from rcds.service.runner import ServiceThread

import jobkit

pytestmark = pytest.mark.timeout(120)
REPOS = ("user1.example.org", "user2.example.org")
CID = "dune/" + "c" * 64
QUICK = PollPolicy(start=0.05, cap=0.2)


def fake_root(tmp_path: Path) -> Path:
    """A stand-in for /cvmfs with both repositories "mounted" (empty)."""
    root = tmp_path / "cvmfs"
    for r in REPOS:
        (root / r).mkdir(parents=True)
    return root


def later(seconds: float, fn: Callable[[], object]) -> threading.Thread:
    """Run ``fn`` after ``seconds`` in a thread."""

    def run() -> None:
        time.sleep(seconds)
        fn()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_found_on_the_mount_after_a_delay_and_linked(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    target = root / REPOS[1] / "sw" / CID
    t = later(0.5, lambda: target.mkdir(parents=True))
    link = tmp_path / "scratch" / "code"
    t0 = time.monotonic()
    out = wait_for_code(CID, REPOS, timeout=30, link=link, cvmfs_root=root, poll=QUICK)
    t.join()
    assert time.monotonic() - t0 >= 0.5
    assert out.found.via == "mount" and out.found.repository == REPOS[1]
    assert out.found.path == str(target)
    assert out.linked == link and link.is_symlink() and link.resolve() == target.resolve()
    # a second wait replaces the link; a real directory in the way is refused
    again = wait_for_code(CID, REPOS, timeout=5, link=link, cvmfs_root=root, poll=QUICK)
    assert again.linked == link and link.is_symlink()
    blocker = tmp_path / "scratch" / "dir"
    blocker.mkdir()
    with pytest.raises(InputError, match="not a symbolic link"):
        wait_for_code(CID, REPOS, timeout=5, link=blocker, cvmfs_root=root, poll=QUICK)


def test_timeout_names_the_cid_and_the_places(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeoutError) as info:
        wait_for_code(CID, (*REPOS, "user3.example.org"), timeout=0.6, cvmfs_root=root, poll=QUICK)
    assert 0.6 <= time.monotonic() - t0 < 5
    msg = str(info.value)
    assert CID in msg and "0.6 s" in msg
    for r in REPOS:
        assert str(root / r / "sw" / CID) in msg
    assert str(root / "user3.example.org") + ": not mounted, and no client access given" in msg


def test_found_through_the_client_library_and_materialized(
    service: ServiceThread, code: Path, access: ClientAccess, tmp_path: Path
) -> None:
    repos = PubapiClient([service.url]).config()
    assert list(repos) == list(REPOS)
    tb = prepare(code, workdir=tmp_path)  # the CID the submit side will publish
    tb.path.unlink()
    cid = f"dune/{tb.sha256}"
    # publish while the job is already waiting: found after a refresh
    t = later(0.5, lambda: publish_code(code, "dune", [service.url]))
    link = tmp_path / "scratch" / "code"
    out = wait_for_code(
        cid, repos, timeout=60, link=link, cvmfs_root=tmp_path / "no-cvmfs", access=access, poll=QUICK
    )
    t.join()
    assert out.found.via == "client" and out.found.path == f"{out.found.repository}:/sw/{cid}"
    assert out.linked == link and link.is_dir() and not link.is_symlink()
    assert (link / "bin" / "run.sh").read_text().startswith("#!/bin/sh")
    assert (link / "bin" / "run.sh").stat().st_mode & 0o111
    assert (link / "latest").is_symlink() and (link / "lib" / "data.txt").exists()


def test_notification_ends_the_pause(
    service: ServiceThread, code: Path, access: ClientAccess, tmp_path: Path
) -> None:
    """With the service's broker, the wait notices the new revision at once, not after a 30 s pause."""
    tb = prepare(code, workdir=tmp_path)
    tb.path.unlink()
    cid = f"dune/{tb.sha256}"
    t = later(1.0, lambda: publish_code(code, "dune", [service.url]))
    t0 = time.monotonic()
    out = wait_for_code(
        cid,
        REPOS,
        timeout=60,
        cvmfs_root=None,
        access=access,
        poll=PollPolicy(start=30.0, cap=30.0),
        notify=service.url,
    )
    t.join()
    took = time.monotonic() - t0
    assert out.found.via == "client"
    assert 1.0 <= took < 15, took  # a poll alone would have looked again only after 30 s


def test_client_library_timeout_says_what_was_seen(
    service: ServiceThread, access: ClientAccess, tmp_path: Path
) -> None:
    with pytest.raises(WaitTimeoutError) as info:
        wait_for_code(CID, REPOS, timeout=0.5, cvmfs_root=None, access=access, poll=QUICK)
    msg = str(info.value)
    assert CID in msg and f"{REPOS[0]}:/sw/{CID} (client library): revision" in msg


def test_client_access_without_key_is_reported(service: ServiceThread, tmp_path: Path) -> None:
    access = ClientAccess((jobkit.repo_url_template(service),), (), cache_dir=tmp_path / "cache")
    with pytest.raises(WaitTimeoutError, match="no client access: no master public key"):
        wait_for_code(CID, REPOS, timeout=0.3, cvmfs_root=None, access=access, poll=QUICK)


def test_bad_cid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'\.\.' component"):
        wait_for_code("../etc", REPOS, timeout=1, cvmfs_root=tmp_path)


def test_poll_policy_backs_off_to_the_cap() -> None:
    it = PollPolicy().delays()
    assert [next(it) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_discover_repos(service: ServiceThread, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert discover_repos(["a.org,b.org", "c.org"], environ={}, config_dir=etc) == ["a.org", "b.org", "c.org"]
    assert discover_repos(environ={"RCDS_REPOS": "x.org y.org"}, config_dir=etc) == ["x.org", "y.org"]
    client = PubapiClient([service.url], policy=RetryPolicy(rounds=1))
    assert discover_repos(environ={}, server_repos=client.config, config_dir=etc) == list(REPOS)
    access = ClientAccess(("http://h/cvmfs/r1.org", "http://h/cvmfs/@fqrn@"))
    assert discover_repos(environ={}, access=access, config_dir=etc) == ["r1.org"]
    etc.mkdir()
    (etc / "default.local").write_text("CVMFS_REPOSITORIES=fifeuser1,other.example.org\n")
    (etc / "default.conf").write_text("CVMFS_DEFAULT_DOMAIN=opensciencegrid.org\n")
    found = discover_repos(environ={}, config_dir=etc)
    assert found == ["fifeuser1.opensciencegrid.org", "other.example.org"]
    with pytest.raises(ConfigError, match="no repositories to look in"):
        discover_repos(environ={}, config_dir=tmp_path / "none")
