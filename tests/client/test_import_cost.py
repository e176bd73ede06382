"""The client library's import stays lean: what it must not load at import time.

Every ``rcds`` client command imports :mod:`rcds.client.repository`. ``dataclasses`` (it pulls in
``inspect``, ``ast``, ``dis``...), ``ssl`` (only https needs it) and ``concurrent.futures`` (only
probing hosts needs it) cost milliseconds per process, so the modules on that path use
NamedTuples and plain classes, and import the others where they are used.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("dataclasses", "inspect", "ssl", "concurrent.futures")


@pytest.mark.parametrize(
    "modules",
    [
        ("rcds.client.repository",),
        ("rcds.client.repository", "rcds.client.fetch.prefetch", "rcds.client.tree.resolve_many"),
    ],
)
def test_client_import_loads_no_heavy_module(modules: tuple[str, ...]) -> None:
    code = f"import sys, {', '.join(modules)}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [], f"importing {', '.join(modules)} loaded {res.stdout.strip()}"
