"""Failures under a live mount: dead daemon, servers down, corrupt objects; many readers at once."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mountkit import is_mounted
from testkit import Entry

HELLO = "sw/g/c1/a/hello.txt"
BIG = "sw/g/c1/a/big.bin"


@pytest.fixture(autouse=True, params=["in-daemon", "workers"])
def downloads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the downloads in the daemon and in 2 worker processes
    (``RCDS_MOUNT_PROCESSES``, read by the daemons the test starts)."""
    monkeypatch.setenv("RCDS_MOUNT_PROCESSES", "0" if request.param == "in-daemon" else "2")
    return str(request.param)


def _drop_pages(path: Path) -> None:
    """Forget the kernel's cached pages of one file, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_sigkill_leaves_enotconn_and_mounting_again_recovers(mount_site: Any, mounter: Any) -> None:
    m = mount_site()
    assert (m.mp / HELLO).read_bytes() == b"hello rcds\n"
    m.proc.stop(signal.SIGKILL)
    with pytest.raises(OSError) as exc:
        os.listdir(m.mp)
    assert exc.value.errno == errno.ENOTCONN
    again = mounter(m.mp, m.args)  # no manual umount
    assert (m.mp / HELLO).read_bytes() == b"hello rcds\n"
    assert (m.mp / "sw/g/c2/x.txt").read_bytes() == b"in c2\n"
    assert again.stop() == 0
    assert not is_mounted(m.mp)


def test_servers_down_warm_cache_served_cold_reads_fail_with_eio(site: Any, mount_site: Any) -> None:
    m = mount_site("--ttl", "0.5")
    assert (m.mp / HELLO).read_bytes() == b"hello rcds\n"  # now in the local cache
    for srv in site.servers:
        srv.stop()
    _drop_pages(m.mp / HELLO)
    assert (m.mp / HELLO).read_bytes() == b"hello rcds\n"
    assert sorted(os.listdir(m.mp / "sw/g/c1/a"))[:2] == ["big.bin", "empty"]  # catalogs cached
    started = time.monotonic()
    with pytest.raises(OSError) as exc:  # not in a/, whose files came with hello.txt (prefetch)
        (m.mp / "sw/g/c1/b/c/d.txt").read_bytes()
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 20  # the configured timeouts, never a hang
    # revision checks fail meanwhile; the mount stays up and keeps serving
    time.sleep(1.2)
    assert (m.mp / HELLO).read_bytes() == b"hello rcds\n"
    assert int(os.getxattr(m.mp, "user.nioerr")) >= 1


def test_stalled_server_fails_within_the_timeouts(site: Any, mount_site: Any) -> None:
    slow = site.fault_server()
    m = mount_site(urls=[slow.base])
    slow.fail("stall", seconds=30)
    started = time.monotonic()
    with pytest.raises(OSError) as exc:
        (m.mp / BIG).read_bytes()
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 15
    slow.clear_faults()
    assert (m.mp / BIG).read_bytes() == site.big  # and it recovers


def test_corrupt_object_is_fetched_elsewhere_eio_when_no_good_copy(site: Any, mount_site: Any) -> None:
    repo = site.open()
    h = repo.entry("/sw/g/c1/a/run.sh").hash
    bad = site.copy("bad")
    obj = site.object_path(bad, h)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    bad_url = site.serve(bad)
    m = mount_site(urls=[bad_url, site.urls[0]])
    assert (m.mp / "sw/g/c1/a/run.sh").read_bytes() == site.files["/sw/g/c1/a/run.sh"]
    only_bad = mount_site(urls=[bad_url], where="bad-only")
    with pytest.raises(OSError) as exc:
        (only_bad.mp / "sw/g/c1/a/run.sh").read_bytes()
    assert exc.value.errno == errno.EIO
    assert (only_bad.mp / HELLO).read_bytes() == b"hello rcds\n"  # the rest is fine


def test_sixteen_readers_are_served_concurrently(site: Any, mount_site: Any) -> None:
    files = {f"f{i:02d}.dat": os.urandom(20_000 + i) for i in range(16)}
    site.publish([Entry(n, d) for n, d in files.items()], "/sw/g/many")
    slow = site.fault_server()
    m = mount_site(urls=[slow.base])
    names = os.listdir(m.mp / "sw/g/many")  # catalogs loaded before the server slows down
    assert sorted(names) == [".cvmfscatalog", *sorted(files)]
    slow.fail("delay", seconds=1.0)  # every request now takes 1 s
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def read(name: str) -> None:
        try:
            results[name] = (m.mp / "sw/g/many" / name).read_bytes()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in files]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    assert not errors and results == files
    assert elapsed < 8.0, f"16 reads of 1 s each took {elapsed:.1f} s: they were serialized"
    slow.clear_faults()  # the daemon's background fetches still under way need not take 1 s each
