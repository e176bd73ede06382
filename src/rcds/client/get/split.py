"""``rcds get`` of a large tree by forked workers that plan their own shares.

With many files, planning each file in the main process and sending it to the workers cost
the main process ~1 CPU-s for 13,000 files, about as much as one worker. So for a directory of
at least :data:`SPLIT_MIN_ROWS` catalog rows the main process only fetches and verifies the
catalogs of the subtree (the trust chain stays in one place: every catalog is checked against
its hash from the signed manifest or its verified parent and kept in the local cache), then
forks the workers (:func:`split_task`: only while it has no other thread, so that no lock can
be held in a child), each of which walks the catalogs itself and copies its share of the tree
(:mod:`rcds.client.get.share`). The main process records the completed files they report
(progress, resume state), writes what they leave to it (chunked and large files, hard links:
:meth:`rcds.client.get.materialize` ``_Plan.run``, as before) and gives the shared directories
their mode and time last.

An error in a worker stops the others (SIGTERM: each finishes the file it is writing) and
reaches the caller as the same error class; a worker that dies is a :class:`StorageError`.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from rcds import errors
from rcds.client.cache.listing import CacheListing
from rcds.client.cache.source import CachedSource
from rcds.client.get.share import ShareSummary, ShareTask, run_share
from rcds.client.get.worker import Setup
from rcds.client.tree.mounted import Located, Mounted
from rcds.errors import RcdsError, StorageError
from rcds.repo.catalog import Catalog

__all__ = ["SPLIT_MIN_ROWS", "SplitWorkers", "catalogs_below", "split_task"]

SPLIT_MIN_ROWS = 2000
"""Catalog rows below which the usual plan (:mod:`rcds.client.get.downloads`) is used."""
FORK_WITH_THREADS = False
"""Fork even if other threads run (tests: their servers are threads of the test process, which
the forked workers never touch)."""
SHARES_PER_WORKER = 8
"""The tree is split into this many shares per worker, taken in turn: workers finish together."""
STOP_SECONDS = 10.0
PIPE_BYTES = 1 << 20

_ERRORS: dict[str, type[RcdsError]] = {
    c.__name__: c
    for c in (
        errors.ConfigError,
        errors.InputError,
        errors.IntegrityError,
        errors.NotFoundError,
        errors.StorageError,
        errors.NetworkError,
    )
}
_ERRORS["FetchError"] = errors.NetworkError
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def catalogs_below(m: Mounted, top: Located) -> dict[str, Catalog]:
    """Every catalog of the subtree of directory ``top`` (entered), loaded and verified."""
    prefix = f"{top.entry.path}/"
    cats = {top.catalog.mountpoint: top.catalog}
    todo = [top.catalog]
    while todo:
        cat = todo.pop()
        for mountpoint, h, size in cat.nested():
            if top.entry.path and not mountpoint.startswith(prefix):
                continue
            inner = m.view.catalog(h, mountpoint, size)
            cats[mountpoint] = inner
            todo.append(inner)
    return cats


def split_task(
    m: Mounted,
    top: Located,
    target: str,
    source: CachedSource,
    keep: bool,
    done: dict[str, str],
    processes: int,
    copies: list[Path],
) -> ShareTask | None:
    """The task of the forked workers for copying directory ``top`` (entered), or None when the
    usual plan is to be used (few rows, no processes, another thread running). A catalog opened
    from a private copy (the file is gone: a catalog fetched just now) is written to a file for the
    workers (SQLite's backup of the open, verified catalog), added to ``copies`` (to delete)."""
    if processes < 1 or not hasattr(os, "fork"):
        return None
    cats = catalogs_below(m, top)
    if sum(c.count_rows() for c in cats.values()) < SPLIT_MIN_ROWS:
        return None
    source.inserter.park()  # its thread (started by the manifest's objects) must not be forked
    files = {mp: (str(_file_of(c, source, copies)), c.what) for mp, c in cats.items()}
    if not _alone():  # another thread is running: the usual plan
        return None
    listing = CacheListing(str(source.cache.dir))
    used = frozenset(b for b in range(256) if not listing.bucket_is_empty(b))
    return ShareTask(
        top.entry.path,
        target,
        top.catalog.mountpoint,
        files,
        done,
        0,
        -1,
        Setup.of(source, keep),
        used,
    )


class SplitWorkers:
    """The forked workers of one copy. :meth:`plan`, then :meth:`wait`; :meth:`close` always."""

    def __init__(self, task: ShareTask, count: int) -> None:
        self.kids: dict[int, Connection] = {}
        self.planned: set[int] = set()
        self.finished: set[int] = set()
        self.stats: dict[str, int] = {}
        self.on_records: Callable[[list[tuple[str, str]], int], None] = _ignore
        self.on_skipped: Callable[[int, int], None] = _ignore
        shares = min(255, SHARES_PER_WORKER * count)
        tokens, w = os.pipe()
        try:
            os.write(w, bytes(range(shares)))
        finally:
            os.close(w)
        task = task._replace(shares=shares, tokens=tokens)
        for k in range(count):
            r, w = os.pipe()
            with suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                code = 1
                try:
                    os.close(r)
                    for conn in self.kids.values():
                        conn.close()
                    code = run_share(task, k, Connection(w, readable=False))
                finally:
                    os._exit(code)
            os.close(w)
            self.kids[pid] = Connection(r, writable=False)
        os.close(tokens)

    def plan(self) -> ShareSummary:
        """The split of the tree, from the first worker (records that arrive meanwhile go to
        :attr:`on_records`, skipped files to :attr:`on_skipped`)."""
        while True:
            for _, message in self._next():
                if message[0] == "plan":
                    return cast(ShareSummary, message[1])

    def wait(self) -> None:
        """Until every worker is done; then reap them."""
        while len(self.finished) < len(self.kids):
            for _ in self._next():
                pass
        for pid in self.kids:
            _reap(pid, STOP_SECONDS)
        for conn in self.kids.values():
            conn.close()
        self.kids = {}

    def _next(self) -> list[tuple[int, Any]]:
        """The messages that are in (waiting for one at least); records and ends handled here."""
        live = {conn: pid for pid, conn in self.kids.items() if pid not in self.finished}
        got = []
        for ready in wait(list(live)):
            conn = cast(Connection, ready)
            pid = live[conn]
            try:
                message: Any = conn.recv()
            except (EOFError, OSError):
                raise self._died(pid) from None
            kind = message[0]
            if kind == "p":
                self.on_records(message[1], message[2])
            elif kind == "s":
                self.on_skipped(message[1], message[2])
            elif kind == "done":
                self.finished.add(pid)
                for where, n in message[1].items():
                    self.stats[where] = self.stats.get(where, 0) + n
            elif kind == "error":
                if message[1] in _ERRORS:
                    raise _ERRORS[message[1]](message[2])
                raise StorageError(
                    f"a download worker process failed: {message[2]}; run rcds get again to resume"
                )
            got.append((pid, message))
        return got

    def _died(self, pid: int) -> StorageError:
        code = _reap(pid, 1.0)
        return StorageError(
            f"a download worker process (pid {pid}) died (exit code {code}); run rcds get again "
            f"to resume, or set RCDS_GET_PROCESSES=0 to download in one process"
        )

    def close(self) -> None:
        """Stop the workers still running (SIGTERM, then SIGKILL after :data:`STOP_SECONDS`)."""
        kids, self.kids = self.kids, {}
        for pid in kids:
            with suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        for pid, conn in kids.items():
            _reap(pid, STOP_SECONDS)
            conn.close()


def _file_of(cat: Catalog, source: CachedSource, copies: list[Path]) -> Path:
    """A file holding the catalog ``cat`` (its own, or a copy made now)."""
    if os.path.isfile(cat.path):
        return cat.path
    path = Path(source.cache.txn) / f"split.{os.getpid()}.{len(copies)}.{time.monotonic_ns()}.db"
    copies.append(path)
    try:
        dst = sqlite3.connect(path)
        try:
            cat.db.backup(dst)
        finally:
            dst.close()
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot write a copy of {cat.what} to {path}: {exc}") from exc
    return path


def _alone() -> bool:
    return FORK_WITH_THREADS or threading.active_count() == 1


def _ignore(a: object, b: int) -> None:
    pass


def _reap(pid: int, timeout: float) -> int | None:
    """Wait for child ``pid`` (kill it after ``timeout`` s); its exit code (-signal if killed)."""
    end = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 60.0
        time.sleep(0.005)
