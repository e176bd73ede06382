"""New revisions under a live mount: kernel caches invalidated, open files keep their content."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rcds.jobs.wait import PollPolicy, wait_for_code

from mountkit import fuse_requests, metrics_url, wait_for
from testkit import NAME, Entry, publish

C1 = "/sw/g/c1"
C2 = "/sw/g/c2"


def _revision(mp: Path) -> int:
    return int(os.getxattr(mp, "user.revision"))


def test_new_revision_while_a_file_is_open(site: Any, mount_site: Any) -> None:
    m = mount_site("--ttl", "0.3")
    x = m.mp / "sw/g/c2/x.txt"
    old_stat = os.stat(x)
    # the kernel caches all of this for 60 s (CVMFS_KCACHE_TIMEOUT) unless told otherwise
    assert x.read_bytes() == b"in c2\n"
    assert sorted(os.listdir(m.mp / "sw/g/c2")) == [".cvmfscatalog", "x.txt"]
    with pytest.raises(FileNotFoundError):
        os.stat(m.mp / "sw/g/c2/y.txt")  # a negative entry in the kernel
    held = open(x, "rb")  # noqa: SIM115 - held across the switch
    try:
        before = _revision(m.mp)
        new = b"the new x, longer than before\n"
        revision = site.publish([Entry("x.txt", new), Entry("y.txt", b"added\n")], C2, replace=True)
        assert revision > before
        assert wait_for(lambda: _revision(m.mp) == revision, timeout=15)
        # new opens, stats and listings see the new revision at once
        assert x.read_bytes() == new
        assert os.stat(x).st_size == len(new)
        assert os.stat(x).st_ino != old_stat.st_ino  # new content, new inode (its own pages)
        assert (m.mp / "sw/g/c2/y.txt").read_bytes() == b"added\n"
        assert sorted(os.listdir(m.mp / "sw/g/c2")) == [".cvmfscatalog", "x.txt", "y.txt"]
        # the file opened before keeps reading its old content
        assert held.read() == b"in c2\n"
        assert os.fstat(held.fileno()).st_size == old_stat.st_size
        # unchanged files keep their inode numbers
        assert (m.mp / "sw/g/c1/a/hello.txt").read_bytes() == b"hello rcds\n"
    finally:
        held.close()
    assert f"revision {revision} applied" in m.proc.logs()


def test_a_file_open_before_a_revision_rereads_its_old_content_from_the_daemon(
    site: Any, mount_site: Any
) -> None:
    # no OPEN reaches the daemon (no-open mode): a held file whose pages the kernel dropped is
    # read again by its old inode, which the daemon still serves with the old content
    m = mount_site("--ttl", "0.3", "--metrics-port", "0")
    url = metrics_url(m.proc)
    x = m.mp / "sw/g/c2/x.txt"
    with open(x, "rb", buffering=0) as held:
        assert held.read() == b"in c2\n"
        new = b"a newer x\n"
        revision = site.publish([Entry("x.txt", new)], C2, replace=True)
        assert wait_for(lambda: _revision(m.mp) == revision, timeout=15)
        assert x.read_bytes() == new
        os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # drop its cached pages
        reads = fuse_requests(url).get("READ", 0)
        assert os.pread(held.fileno(), 100, 0) == b"in c2\n"
        assert fuse_requests(url).get("READ", 0) > reads  # served by the daemon, not the kernel
        assert os.pread(held.fileno(), 3, 3) == b"c2\n"


def test_sigusr1_applies_a_new_revision_before_the_ttl(site: Any, mount_site: Any) -> None:
    m = mount_site()  # the catalog TTL: 240 s
    before = _revision(m.mp)
    with pytest.raises(FileNotFoundError):
        os.stat(m.mp / "sw/g/c9")
    revision = site.publish([Entry("now.txt", b"now\n")], "/sw/g/c9")
    time.sleep(1.5)
    assert _revision(m.mp) == before  # no check before the TTL...
    os.kill(m.proc.pid, signal.SIGUSR1)  # ...unless asked (as a notification subscriber does)
    assert wait_for(lambda: _revision(m.mp) == revision, timeout=10)
    assert (m.mp / "sw/g/c9/now.txt").read_bytes() == b"now\n"
    assert m.proc.proc is not None and m.proc.proc.poll() is None


def test_a_removed_cid_disappears(site: Any, mount_site: Any) -> None:
    m = mount_site("--ttl", "0.3")
    assert (m.mp / "sw/g/c2/x.txt").exists()
    revision = site.s0.remove("/sw/g/c2").revision
    assert wait_for(lambda: _revision(m.mp) == revision, timeout=15)
    assert not (m.mp / "sw/g/c2").exists()
    assert "c2" not in os.listdir(m.mp / "sw/g")


def test_rcds_wait_sees_a_new_cid_through_the_mount(site: Any, mounter: Any, tmp_path: Path) -> None:
    from mountkit import write_config

    config = write_config(tmp_path / "etc")
    root = tmp_path / "cvmfs"
    mp = root / NAME
    args = [
        NAME,
        str(mp),
        "--config-dir",
        str(config),
        "--cache",
        str(tmp_path / "c"),
        "--key",
        str(site.key),
    ]
    args += ["--server", site.urls[0], "--ttl", "0.3"]
    mounter(mp, args)
    result: dict[str, Any] = {}

    def waiter() -> None:
        try:
            result["outcome"] = wait_for_code(
                "g/c3",
                [NAME],
                timeout=20,
                link=tmp_path / "code",
                cvmfs_root=root,
                poll=PollPolicy(start=0.1, factor=1.0, cap=0.1),
            )
        except Exception as exc:
            result["error"] = exc

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_for(lambda: "g" in os.listdir(mp / "sw"), timeout=5)
    site.publish([Entry("run.py", b"print('c3')\n")], "/sw/g/c3")
    t.join(30)
    assert not t.is_alive()
    assert "error" not in result, result
    outcome = result["outcome"]
    assert outcome.found.via == "mount"
    assert (tmp_path / "code" / "run.py").read_bytes() == b"print('c3')\n"


def test_an_announced_revision_is_applied_at_once(site: Any, mount_site: Any) -> None:
    """``CVMFS_NOTIFICATION_SERVER``: the mount subscribes, verifies the pushed manifest and
    applies it (kernel caches invalidated) long before the 240 s TTL."""
    from rcds.net.notify_post import NotifySender
    from rcds.notify.server import BrokerThread
    from rcds.publish.stratum0 import Stratum0

    with BrokerThread() as broker:
        m = mount_site(extra={"CVMFS_NOTIFICATION_SERVER": broker.url})
        before = _revision(m.mp)
        with pytest.raises(FileNotFoundError):
            os.stat(m.mp / "sw/g/c8")  # a negative entry the kernel keeps
        assert wait_for(lambda: broker.call(lambda: broker.broker.subscribers()) == 1, timeout=10)
        sender = NotifySender([broker.url])
        announcing = Stratum0(site.root, NAME, on_revision=sender.announce)
        t0 = time.monotonic()
        revision = publish(announcing, [Entry("pushed.txt", b"pushed\n")], "/sw/g/c8")
        sender.close()
        assert revision > before
        assert wait_for(lambda: _revision(m.mp) == revision, timeout=10)
        took = time.monotonic() - t0
        assert (m.mp / "sw/g/c8/pushed.txt").read_bytes() == b"pushed\n"
        assert took < 10
        assert f"revision {revision} applied" in m.proc.logs()
