"""``rcds get`` of a large tree by forked workers that plan their own shares.

Planning each file in the main process and sending it to the workers cost the main process
~1 CPU-s for 13,000 files, about as much as one worker. So for a directory of at least
:data:`SPLIT_MIN_ROWS` catalog rows the main process only fetches and verifies the catalogs (the
trust chain stays in one place), walks them once with lean rows and splits the tree
(:func:`split_task`, :func:`rcds.client.get.share.split_tree`), then forks the workers
(:class:`SplitWorkers`) while it has no other thread (the cache inserter's thread is parked
first; if another thread runs, e.g. in a library caller, the usual plan is used), so that no
lock can be held in a child. The workers inherit the rows and plan, fetch and write their shares
(:mod:`rcds.client.get.share`). The main process records the completed files they report
(progress, resume state), writes what they leave to it (chunked and large files, hard links)
and gives the shared directories their mode and time last.

An error in a worker stops the others (SIGTERM: each finishes the file it is writing and
removes nothing complete) and reaches the caller as the same error class; a worker that dies is
a :class:`StorageError` that says how to resume.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from rcds.client.cache.source import CachedSource
from rcds.client.get.pipes import Receiver, Sender
from rcds.client.get.share import ShareSummary, ShareTask, run_share, split_tree
from rcds.client.get.worker import Setup
from rcds.client.tree.rows import LeanDir
from rcds.errors import RcdsError, StorageError
from rcds.workerproc import widen_pipe

__all__ = ["SPLIT_MIN_ROWS", "SplitWorkers", "split_task"]

SPLIT_MIN_ROWS = 2000
"""Catalog rows below which the usual plan (:mod:`rcds.client.get.downloads`) is used."""
FORK_WITH_THREADS = False
"""Fork even if other threads run (tests: their servers are threads of the test process, which
the forked workers never touch)."""
SHARES_PER_WORKER = 32
"""The tree is split into this many shares per worker, taken in turn: workers finish together.
With 8, the last share left one worker alone for 5-8 % of the copy (the split's costs are
estimates); with 32, for ~1 % (the real tree, 2 workers)."""
STOP_SECONDS = 10.0
PIPE_BYTES = 1 << 20


def split_task(
    dirs: list[LeanDir],
    top: str,
    target: str,
    source: CachedSource,
    keep: bool,
    done: dict[str, str],
    processes: int,
) -> tuple[ShareTask, ShareSummary] | None:
    """The task of the forked workers for copying the walked tree ``dirs`` of directory ``top``,
    and what the main process must do; None when the usual plan is to be used (few rows, no
    processes, another thread running)."""
    if processes < 1 or not hasattr(os, "fork"):
        return None
    if sum([len(d[2]) for d in dirs]) < SPLIT_MIN_ROWS:
        return None
    source.inserter.park()  # its thread (started by the manifest's objects) must not be forked
    if not _alone():  # another thread is running: the usual plan
        return None
    used = _file_buckets(str(source.cache.dir))
    shares = min(255, SHARES_PER_WORKER * processes)
    split, summary = split_tree(dirs, top, target, shares)
    return ShareTask(top, target, split, done, shares, -1, Setup.of(source, keep), used), summary


class SplitWorkers:
    """The forked workers of one copy. :meth:`wait`, :meth:`reap`; :meth:`close` always."""

    def __init__(self, task: ShareTask, count: int) -> None:
        self.kids: dict[int, Receiver] = {}
        self.finished: set[int] = set()
        self.stats: dict[str, int] = {}
        self.on_records: Callable[[list[tuple[str, str]], int], None] = _ignore
        self.on_skipped: Callable[[int, int], None] = _ignore
        tokens, w = os.pipe()
        try:
            os.write(w, bytes(range(task.shares)))
        finally:
            os.close(w)
        task = task._replace(tokens=tokens)
        try:
            for k in range(count):
                self._fork(task, k)
        except BaseException:  # e.g. no more processes allowed, or Ctrl-C: stop those started
            self.close()
            raise
        finally:
            os.close(tokens)

    def _fork(self, task: ShareTask, k: int) -> None:
        r, w = os.pipe()
        widen_pipe(w, PIPE_BYTES)
        try:
            pid = os.fork()
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                os.close(r)
                for conn in self.kids.values():
                    os.close(conn.fd)
                code = run_share(task, k, Sender(w))
            finally:
                os._exit(code)
        os.close(w)
        self.kids[pid] = Receiver(r)

    def wait(self) -> None:
        """Until every worker has said it is done (each then only exits: :meth:`reap` them)."""
        while len(self.finished) < len(self.kids):
            for _ in self._next():
                pass

    def reap(self) -> None:
        """Wait for the workers to exit, after :meth:`wait` (the caller finishes its own work
        first: a worker's exit, unmapping its memory, takes ~5-10 ms)."""
        kids, self.kids = self.kids, {}
        for pid, conn in kids.items():
            _reap(pid, STOP_SECONDS)
            _close(conn)

    def _next(self) -> list[tuple[int, Any]]:
        """The messages that are in (waiting for one at least); records and ends handled here."""
        live = {conn.fd: (pid, conn) for pid, conn in self.kids.items() if pid not in self.finished}
        poller = select.poll()
        for fd in live:
            poller.register(fd, select.POLLIN)
        got = []
        for fd, _ in poller.poll():  # readable, or the worker's end closed (POLLHUP: EOFError below)
            pid, conn = live[fd]
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
                raise worker_error(message[1], message[2])
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
            _close(conn)


def _file_buckets(root: str) -> frozenset[int]:
    """The cache directories (by first hash byte) that may hold file objects, which a worker then
    asks about its objects. Not those holding only objects of another kind (a suffix letter:
    ``...C``, the copy's own catalogs, ``...X``, the repository's certificate): with none, a
    worker opens no cache at all."""
    used = []
    for b in range(256):
        try:
            names = os.listdir(f"{root}/{b:02x}")
        except FileNotFoundError:
            continue
        except OSError:
            used.append(b)
            continue
        if any(not n[-1:].isupper() for n in names):
            used.append(b)
    return frozenset(used)


def _close(conn: Receiver) -> None:
    with suppress(OSError):
        os.close(conn.fd)


def worker_error(kind: str, message: str) -> RcdsError:
    """:func:`rcds.client.get.procs.worker_error` (imported when needed: that module imports
    :mod:`multiprocessing`, start-up time this route does not pay otherwise)."""
    from rcds.client.get.procs import worker_error as error

    return error(kind, message)


def _alone() -> bool:
    return FORK_WITH_THREADS or threading.active_count() == 1


def _ignore(a: object, b: int) -> None:
    pass


def _reap(pid: int, timeout: float) -> int | None:
    """Wait for child ``pid`` (kill it after ``timeout`` s); its exit code (-signal if killed).

    Woken by the child's exit (a pidfd, where the kernel has them), not by polling."""
    end = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # an older kernel, or the child is gone already
        fd = -1
    try:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return os.waitstatus_to_exitcode(status)
            left = end - time.monotonic()
            if left <= 0:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + 60.0
            elif fd >= 0:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(min(left, 1.0) * 1000)
            else:
                time.sleep(0.005)
    finally:
        if fd >= 0:
            os.close(fd)
