"""Helpers for the stand-alone stratum 1 tests (import as ``replkit``)."""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rcds.format import manifest
from rcds.format.dirent import FLAG_EXTERNAL
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.format.keys import load_public_key_file
from rcds.publish.stratum0 import Stratum0
from rcds.repo.catalog import Catalog
from rcds.repo.source import StoreSource
from rcds.repo.verify import VerifyReport, verify_repository
from rcds.serve.handler import AccessRecord
from rcds.storage.local import LocalStore

from testkit import RCDS, Entry, rcds


def cid_entries(tag: str, n: int = 6, size: int = 0) -> list[Entry]:
    """A CID tree of ``n`` unique files (padded to ``size`` bytes) and a symlink."""
    out = [Entry("bin", kind="dir", mode=0o755)]
    for i in range(n):
        body = f"#!/bin/sh\necho {tag} {i}\n".encode()
        out.append(Entry(f"bin/tool{i}", body + os.urandom(max(0, size - len(body))), mode=0o755))
    out.append(Entry("link", kind="symlink", target="bin/tool0", mode=0o777))
    return out


def replica_add(root: Path, fqrn: str, upstream: str, key: Path) -> None:
    """The command line ``rcds replica add`` (fresh interpreter): register ``fqrn`` under ``root``."""
    rcds("replica", "add", fqrn, "--upstream", upstream, "--key", str(key), "--root", str(root))


def replica_config(
    path: Path, fqrn: str, upstream: str, key: Path, *, interval: float = 300, sections: str = ""
) -> Path:
    """Write a ``rcds replica run`` configuration for one repository to ``path`` (the replica's
    root ``s1`` beside it), ``sections`` (e.g. ``[serve]``, ``[notify]``) before the repository's;
    return ``path``."""
    path.write_text(
        f"[replica]\nroot = 's1'\ninterval = {interval:g}\n\n{sections}"
        f"[[repository]]\nname = '{fqrn}'\nupstream = '{upstream}'\nkey = '{key}'\n"
    )
    return path


def key_file(s0: Stratum0) -> Path:
    """The master public key file of a test stratum 0."""
    return s0.layout.key("pub")


def verify_dir(root: Path, fqrn: str, key: Path) -> VerifyReport:
    """Full verification of a replica directory."""
    return verify_repository(StoreSource(LocalStore(root)), fqrn, [load_public_key_file(key)])


def revision_of(root: Path) -> int:
    """The revision in a directory's manifest."""
    return manifest.parse((root / ".cvmfspublished").read_bytes()).manifest.revision


def assert_closed(dest: LocalStore, work: Path) -> None:
    """The crash-safety invariant: every catalog in the replica has its whole subtree there."""
    for name in dest.list_objects():
        if not name.endswith("C"):
            continue
        db = work / "check.db"
        db.write_bytes(zlib.decompress(dest.get(name)))
        with Catalog(db, "") as cat:
            rows = cat.db.execute("SELECT hash, flags FROM catalog WHERE hash IS NOT NULL").fetchall()
            chunk_rows = cat.db.execute(
                "SELECT chunks.hash, catalog.flags FROM chunks JOIN catalog USING (md5path_1, md5path_2)"
            ).fetchall()
            for kind, found in ((ObjectKind.FILE, rows), (ObjectKind.PARTIAL, chunk_rows)):
                for raw, flags in found:
                    if raw and not flags & FLAG_EXTERNAL:
                        h = ContentHash(Algorithm.from_flag_value((flags >> 8) & 7), bytes(raw))
                        assert dest.has(h.object_name(kind)), f"{name} is stored without its objects"
            for mount, h, _ in cat.nested():
                assert dest.has(h.object_name(ObjectKind.CATALOG)), f"{name} lacks its nested {mount}"
        db.unlink()


class Recorder:
    """An access-log callback that records answered targets and can run a hook per record."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[AccessRecord] = []
        self.hook: Callable[[AccessRecord, int], None] | None = None

    def __call__(self, record: AccessRecord) -> None:
        with self.lock:
            self.records.append(record)
            n = len(self.records)
            hook = self.hook
        if hook is not None:
            hook(record, n)

    def take(self) -> list[AccessRecord]:
        """Return and forget the records so far."""
        with self.lock:
            out, self.records = self.records, []
        return out

    def bytes_sent(self, prefix: str = "") -> int:
        """Body bytes sent for targets containing ``prefix``."""
        with self.lock:
            return sum(r.sent for r in self.records if prefix in r.target)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from a server on loopback: status, headers (lower-case names) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Lines:
    """The stdout of a process (``proc``), line by line, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str]) -> None:
        with out:  # closed here, at the end of the output, by the one thread that reads it
            for line in out:
                self.q.put(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The match of the first line from now on that matches ``pattern``, within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s") from None
            m = re.search(pattern, line)
            if m:
                return m


@contextmanager
def replica_run(config: Path, *, stop_within: float = 30.0) -> Iterator[Lines]:
    """A running ``rcds replica run --config config`` process, as its stdout lines.

    On leaving, the process gets SIGTERM and must exit with status 0 within ``stop_within``
    seconds (its stderr is the assertion's message); one that does not is killed.
    """
    proc = subprocess.Popen(
        [*RCDS, "replica", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Lines(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(stop_within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            assert proc.stderr is not None
            with proc.stderr:
                err = proc.stderr.read()
        assert code == 0, err
