"""The mount's read-ahead (rcds.mount.fuse.mounting.set_read_ahead), on a real FUSE mount.

The read-ahead itself (one ``READ`` per MiB) is counted through a real daemon in
``tests/mount/test_mount_requests.py``; here: the device is found from ``/proc/self/mountinfo``
(also under a path with a space, which mountinfo escapes) and its ``read_ahead_kb`` changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rcds.mount.fuse import mounting


def _read_ahead(mountpoint: Path) -> int:
    st = os.stat(mountpoint)
    return int(Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb").read_text())


def test_the_read_ahead_of_a_mount_is_raised(site: Any, mount_site: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("sysfs is writable by root only")
    m = mount_site(where="mount point")  # a space: mountinfo writes it as \040
    assert _read_ahead(m.mp) == mounting.READ_AHEAD_KB  # the daemon raised it after INIT
    assert mounting.set_read_ahead(m.mp, 512)
    assert _read_ahead(m.mp) == 512
    assert not mounting.set_read_ahead(tmp_path / "not-mounted", 512)


def test_mountinfo_escapes_are_undone() -> None:
    assert mounting._unescape(b"/a\\040b\\011c\\134d") == b"/a b\tc\\d"
    assert mounting._unescape(b"/plain") == b"/plain"
