"""What the kernel still asks the daemon once its caches are warm: nothing.

Counted by the daemon's own FUSE session (``rcds_mount_requests_total`` at ``--metrics-port``),
no tracing: the first pass over the tree sends at most one ``OPEN`` and one ``OPENDIR`` (each
answered ``ENOSYS``: the kernel then stops asking), the second pass sends no ``OPEN``,
``OPENDIR``, ``READDIR``/``READDIRPLUS``, ``READLINK``, ``READ`` or ``LOOKUP`` at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mountkit import fuse_requests, metrics_url

COUNTED = ("OPEN", "OPENDIR", "READDIR", "READDIRPLUS", "READLINK", "READ", "LOOKUP", "RELEASE")


def _walk(top: Path) -> tuple[int, int]:
    """List every directory, read every file and link; (files read, bytes read)."""
    files = size = 0
    for here, dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(here, name)
            if os.path.islink(path):
                os.readlink(path)
                continue
            os.lstat(path)
            with open(path, "rb") as f:
                size += len(f.read())
            files += 1
        for name in dirs:
            os.lstat(os.path.join(here, name))
    return files, size


def test_a_warm_second_pass_sends_no_open_listing_or_read(site: Any, mount_site: Any) -> None:
    m = mount_site("--metrics-port", "0")
    url = metrics_url(m.proc)
    first = _walk(m.mp)
    assert first[0] >= 5 and first[1] > 0
    after_first = fuse_requests(url)
    assert after_first.get("READ", 0) >= 1 and after_first.get("READDIRPLUS", 0) >= 1
    assert after_first.get("READLINK", 0) >= 1  # the tree has symbolic links
    assert after_first.get("OPEN", 0) <= 1  # answered ENOSYS: the kernel stops opening
    assert after_first.get("OPENDIR", 0) <= 1
    assert after_first.get("RELEASE", 0) == 0
    second = _walk(m.mp)
    assert second == first
    after_second = fuse_requests(url)
    sent = {op: after_second.get(op, 0) - after_first.get(op, 0) for op in COUNTED}
    assert sent == dict.fromkeys(COUNTED, 0), (sent, after_first, after_second)
