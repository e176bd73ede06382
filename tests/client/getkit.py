"""Shared parts of the ``rcds get`` tests: a published tree of many small files, and checks."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.get import worker as getworker
from rcds.client.get.state import state_path
from rcds.client.get.worker import Target

from testkit import Entry

if TYPE_CHECKING:
    from conftest import Site

MANY = "/sw/g/many"
N = 300


def content(i: int) -> bytes:
    """The data of file ``i`` of :func:`many` (250 distinct contents, of different sizes)."""
    return (f"file {i % 250}\n" * (1 + i % 50)).encode()  # 250 distinct contents for 300 files


@pytest.fixture
def many(site: Site) -> dict[str, bytes]:
    """Publish ``N`` small files (some sharing content) under ``MANY``; their relative paths and data."""
    files = {f"d{i % 7}/f{i:03d}.txt": content(i) for i in range(N)}
    entries = [Entry(f"d{k}", kind="dir", mode=0o750) for k in range(7)]
    entries += [
        Entry(rel, data, mode=0o600 if i % 2 else 0o644) for i, (rel, data) in enumerate(files.items())
    ]
    entries += [Entry("lnk", kind="symlink", target="d0/f000.txt"), Entry("e/empty", b"")]
    site.publish(entries, MANY)
    files["e/empty"] = b""
    return files


def regular_files(dest: Path) -> dict[str, bytes]:
    """Every regular file below ``dest`` but the catalog copy: relative path -> data."""
    out = {}
    for d, _, names in os.walk(dest):
        for n in names:
            p = Path(d, n)
            rel = p.relative_to(dest).as_posix()
            if not p.is_symlink() and rel != ".cvmfscatalog":
                out[rel] = p.read_bytes()
    return out


def object_of(site: Site, data: bytes) -> Path:
    """The served object file of the content ``data`` (found through a file holding it)."""
    repo = site.open(cache_dir=site.work / "lookup-cache")
    for d, _, names in repo.walk(MANY):
        for n in names:
            path = f"{d}/{n}"
            if repo.lstat(path).st_mode & 0o170000 == 0o100000 and repo.read_bytes(path) == data:
                return site.object_path(site.public, repo.pieces(path)[0].hash)
    raise AssertionError("no such content")


def recorded(cache: Path, dest: Path) -> dict[str, str]:
    """The resume records of the copy into ``dest`` (kept in the cache directory ``cache``)."""
    head, *lines = state_path(cache, dest).read_text().splitlines()
    assert json.loads(head)["target"] == os.path.realpath(dest)
    return {rel: key for line in lines for rel, key in json.loads(line)}


@contextmanager
def stopped_while_writing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run a worker's loop in this process, told to stop (SIGTERM, with the worker's own handler)
    as it starts writing a file; the loop must end with ``SystemExit``."""
    real_write = getworker.write_file

    def write(final: str, attrs: Target, data: bytes) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent stops the workers: this one is writing
        real_write(final, attrs, data)

    monkeypatch.setattr(getworker, "write_file", write)
    previous = signal.signal(signal.SIGTERM, getworker._stop)  # the worker's handler, here
    try:
        with pytest.raises(SystemExit):
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        getworker._stopping = False  # set by the handler; not through monkeypatch, which would restore it
