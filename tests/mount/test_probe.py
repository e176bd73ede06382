"""``rcds probe``: what a node allows, checked for real, as root and as an unprivileged user."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import Node, dev_fuse_mode, node

from rcds.mount.probe import Fact, check_root, choose_mode, kernel_version, mounts_below

from testkit import NAME


@pytest.fixture(scope="module")
def site() -> Iterator[Node]:
    with node() as n:
        yield n


def _probe(site: Node, *args: str, code: int = 0) -> dict[str, object]:
    result = site.run(["probe", "--json", "--config-dir", str(site.config_dir), *args])
    assert result.returncode == code, result.stderr
    return dict(json.loads(result.stdout))


def test_dev_fuse_0600_is_reported_and_no_mode_works(site: Node) -> None:
    with dev_fuse_mode(0o600):
        report = _probe(site, "--root", str(site.base / "no-such-root"), code=1)
    assert report["uid"] == site.user.pw_uid
    dev_fuse = report["dev_fuse"]
    assert isinstance(dev_fuse, dict)
    assert dev_fuse["ok"] is False and "0600" in dev_fuse["detail"] and "chmod 0666" in dev_fuse["detail"]
    fusermount = report["fusermount3"]
    assert (
        isinstance(fusermount, dict)
        and fusermount["ok"] is False
        and "opens /dev/fuse" in fusermount["detail"]
    )
    assert report["mode"] is None
    assert "rcds get" in str(report["reason"])
    assert report["userns"] == {"ok": True, "detail": "user and mount namespaces work for this user"}


def test_dev_fuse_0666_allows_fuse_inside_a_user_namespace(site: Node) -> None:
    with dev_fuse_mode(0o666):
        report = _probe(site)
    assert report["fuse_in_userns"] == {
        "ok": True,
        "detail": "a FUSE file system mounts inside a user namespace",
    }
    assert report["mode"] == "userns"
    cache = report["cache_writable"]
    assert isinstance(cache, dict) and cache["ok"] is True


def test_a_node_without_user_namespaces_falls_back_to_fusermount3(site: Node) -> None:
    with dev_fuse_mode(0o666):
        result = site.run(["probe", "--json", "--config-dir", str(site.config_dir)], no_userns=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["userns"]["ok"] is False and "cannot create a user namespace" in report["userns"]["detail"]
    assert report["fuse_in_userns"] == {"ok": False, "detail": "needs user namespaces"}
    assert report["mode"] == "fusermount" and "RCDS_ROOT" in report["reason"]


def test_an_unwritable_cache_is_reported(site: Node) -> None:
    with dev_fuse_mode(0o666):
        report = _probe(site, "--cache", "/root/rcds-cache")
    cache = report["cache_writable"]
    assert isinstance(cache, dict) and cache["ok"] is False and "RCDS_CACHE_DIR" in cache["detail"]


def test_text_output_names_the_mode(site: Node) -> None:
    with dev_fuse_mode(0o666):
        result = site.run(["probe", "--config-dir", str(site.config_dir)])
    assert result.returncode == 0
    assert "mode:" in result.stdout and "userns" in result.stdout
    with dev_fuse_mode(0o600):
        result = site.run(["probe", "--config-dir", str(site.config_dir)])
    assert result.returncode == 1
    assert "mode:                   none" in result.stdout and "0600" in result.stdout


def test_a_root_that_serves_the_repositories_is_native(tmp_path: Path) -> None:
    # A real mount point standing in for a repository: a tmpfs under a plain root directory.
    import subprocess

    root = tmp_path / "cvmfs"
    (root / NAME).mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(root / NAME)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert str(root / NAME) in mounts_below(root)
        state, served, missing = check_root(root, [NAME, "other.example.org"])
        assert state.ok and "plain directory" in state.detail
        assert served == (NAME,) and missing == ("other.example.org",)
        state, served, missing = check_root(root, [NAME])
        assert missing == ()
    finally:
        subprocess.run(["umount", str(root / NAME)], check=False)


def test_choose_mode_prefers_native_then_root_then_userns_then_fusermount() -> None:
    yes, no = Fact(True, "ok"), Fact(False, "nope")
    assert choose_mode(1000, yes, yes, yes, yes, True, True)[0] == "native"
    assert choose_mode(0, yes, yes, yes, yes, True, False)[0] == "root"
    assert choose_mode(1000, yes, yes, yes, yes, False, False)[0] == "userns"
    assert choose_mode(1000, yes, no, no, yes, False, False)[0] == "fusermount"
    mode, reason = choose_mode(1000, no, no, no, no, False, False)
    assert mode is None and "rcds get" in reason and "nope" in reason


def test_kernel_version_parses_distribution_strings() -> None:
    assert kernel_version("6.1.0-18-amd64") == (6, 1)
    assert kernel_version("4.18.0-553.el8_10.x86_64") == (4, 18)
    assert kernel_version("garbage") == (0, 0)
