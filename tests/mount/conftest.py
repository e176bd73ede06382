"""Fixtures for the mount tests: real FUSE mounts (as root) of real repositories on loopback.

The repository and its servers are the client tests' (``tests/client/conftest.py``: the
template tree with nested catalogs, chunked files, hard links and symlinks, served by two
engine servers), loaded under another module name so the code is shared. Each mount is a real
``rcds mount ... --foreground`` daemon (:class:`mountkit.MountProc`), stopped and unmounted at
teardown.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mountkit import MountProc, write_config
from testkit import load_conftest

client = load_conftest("client", "rcds_client_testkit")  # clientkit, getkit beside it
Site = client.Site
template = client.template
site = client.site
squid = client.squid


def _fuse_usable() -> str | None:
    if os.geteuid() != 0:
        return "FUSE mounts in the tests need root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    return None


MakeMount = Callable[..., MountProc]


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[MakeMount]:
    """Start ``rcds mount`` daemons: ``mounter(mountpoint, args)``; all stopped at teardown.
    Skips the test where FUSE mounts are not possible."""
    reason = _fuse_usable()
    if reason:
        pytest.skip(reason)
    procs: list[MountProc] = []

    def make(mountpoint: Path, args: Sequence[str], start: bool = True) -> MountProc:
        p = MountProc(mountpoint, args, tmp_path / f"mount{len(procs)}.log")
        procs.append(p)
        return p.start() if start else p

    yield make
    for p in procs:
        p.cleanup()


class Mounted:
    """A mount of the test site: ``mp`` (its mount point), ``proc``, ``args``, ``config``."""

    def __init__(self, site: Any, proc: MountProc, args: list[str], config: Path) -> None:
        self.site = site
        self.proc = proc
        self.mp = proc.mountpoint
        self.args = args
        self.config = config


@pytest.fixture
def mount_site(site: Any, mounter: MakeMount, tmp_path: Path) -> Callable[..., Mounted]:
    """Mount the test site's repository: ``mount_site(*more_args, urls=, extra=, where=)`` (server
    URLs, more default.local settings, the mount point's name in the test's directory)."""

    def make(
        *more: str,
        urls: Sequence[str] | None = None,
        extra: dict[str, str] | None = None,
        where: str = "mnt",
    ) -> Mounted:
        config = write_config(tmp_path / f"etc{len(os.listdir(tmp_path))}", extra)
        args = [
            client.NAME,
            str(tmp_path / where),
            "--config-dir",
            str(config),
            "--cache",
            str(tmp_path / f"{where}-cache"),
            "--key",
            str(site.key),
        ]
        for url in urls or site.urls:
            args += ["--server", url]
        args += list(more)
        proc = mounter(tmp_path / where, args)
        return Mounted(site, proc, args, config)

    return make
