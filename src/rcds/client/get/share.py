"""A forked worker's shares of ``rcds get``: plan them, fetch, verify and write them.

The main process (:mod:`rcds.client.get.split`) has walked the verified catalogs of the subtree
once (lean rows, names checked) and split the directories in walk order into shares
(:func:`split_tree`: contiguous runs of about equal cost, a file counting its size plus
:data:`FILE_COST`; several shares per worker) before forking the workers, which inherit the
rows and the split: nothing is sent, and no catalog is opened again. A worker takes the next
share by reading one byte from a pipe that holds the share numbers (whoever is done first takes
the next, so the workers finish together), and for each (:meth:`_Share.run`): creates its
directories (and, first, those above its first one, the *spine*, owned by earlier shares, with
:func:`ensure_dir`, which tolerates another process making the same directory at the same
moment), checks each file against the resume records, writes the empty files, downloads its
single-object files pipelined through a fetcher of its own
(:func:`rcds.client.get.worker.run_batch`: the same servers, proxies, fail-over and
verification; objects in the local cache are copied from it), writes its symbolic links and
gives its directories their mode and time. It never follows a symlink in the destination and
writes nothing outside it, as :mod:`rcds.client.get.materialize` does.

Left to the main process (:class:`ShareSummary`): chunked and large files and hard-link members
(written there after the fork, as before), and the directories it gives their mode and time at
the very end (the spines, and the directories above the files it writes).

Messages to the main process (pickled on one pipe): ``("p", [(rel, key), ...], bytes)`` for
completed files now and then, ``("s", files, bytes)`` for files found complete from an earlier
copy, ``("done", stats)`` at the end, or ``("error", class name, message)``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple, cast

from rcds.client.cache.source import CachedSource
from rcds.client.get import worker as _worker
from rcds.client.get.fs import copy_into, finish_dir, prepare_dir, read_umask, write_file, write_symlink
from rcds.client.get.pipes import Sender
from rcds.client.get.state import LEGACY_STATE_FILE
from rcds.client.get.worker import FAST_MAX, Setup, Target, WireJob, read_jobs, run_batch, run_jobs
from rcds.client.tree.rows import LeanDir, lean_dirent
from rcds.errors import RcdsError, StorageError
from rcds.format.dirent import ALGORITHM_OF_FLAG_VALUE, FLAG_CHUNKED, FLAG_EXTERNAL
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.net.fetcher import Fetcher
from rcds.repo.catalog import Catalog, LeanRow

__all__ = [
    "FILE_COST",
    "REPORT_EVERY",
    "ShareSummary",
    "ShareTask",
    "ancestors",
    "ensure_dir",
    "owners",
    "run_share",
]

FILE_COST = 32 << 10
"""What a file costs a worker besides its size, in bytes of content (create, write, close and
the Python per file, ~60 µs, against ~2 ns per byte to inflate and write): the split's weight."""
REPORT_EVERY = 256
"""Completed files per progress message."""

_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000
_NOT_ONE_OBJECT = FLAG_CHUNKED | FLAG_EXTERNAL
_ALGORITHMS = ALGORITHM_OF_FLAG_VALUE
_VALUES = tuple("" if a is None else a._value_ for a in ALGORITHM_OF_FLAG_VALUE)
_IDENTIFIERS = tuple("" if a is None else a.identifier for a in ALGORITHM_OF_FLAG_VALUE)
_FILE = ObjectKind.FILE._value_
_NEW = tuple.__new__


class ShareTask(NamedTuple):
    """What every worker is given (inherited through ``fork``: nothing is sent)."""

    top: str
    """Repository path of the directory copied."""
    target: str
    """Its destination (created by the main process)."""
    split: Split
    """The tree and its split (:func:`split_tree`)."""
    done: dict[str, str]
    """The resume records of an earlier copy (relative path -> content key)."""
    shares: int
    """Shares of the tree (more than workers: whoever is done first takes the next)."""
    tokens: int
    """Read end of a pipe holding one byte per share, the share numbers in order (closed for
    writing): a worker takes the next share by reading one byte."""
    setup: Setup
    buckets: frozenset[int]
    """The first bytes of the hashes of the objects in the local cache (its directories not empty):
    only objects in these can be there."""


class ShareSummary(NamedTuple):
    """What the split tells the main process: counts, and what it must do itself."""

    files: int
    """Single-object files (the workers' part), and their bytes."""
    bytes: int
    directories: int
    """Directories the workers finish (the others are in :attr:`finish`)."""
    symlinks: int
    special: int
    legacy_is_an_entry: bool
    extras: list[tuple[str, str, str, LeanRow, Catalog]]
    """Files left to the main process: (rel, repository path, destination, row, catalog)."""
    finish: list[tuple[str, LeanRow]]
    """Directories the main process finishes (mode, time) at the very end: (rel, row)."""


def owners(dirs: list[LeanDir], workers: int) -> tuple[list[int], dict[str, LeanRow]]:
    """The worker of each directory (contiguous runs of about equal cost), and every
    directory's own row by repository path."""
    costs = []
    rows_of: dict[str, LeanRow] = {}
    total = 0
    for path, _, rows in dirs:
        c = FILE_COST
        for r in rows:
            kind = r[1] & _S_IFMT
            if kind == _S_IFREG:
                c += FILE_COST + r[2]
            elif kind == _S_IFDIR:
                rows_of[f"{path}/{r[0]}"] = r
        costs.append(c)
        total += c
    return _runs(costs, total, workers), rows_of


def _runs(costs: list[int], total: int, workers: int) -> list[int]:
    """The worker of each item of ``costs`` (summing to ``total``): contiguous runs of about equal cost."""
    out = []
    cum = 0
    for c in costs:
        out.append(min(workers - 1, (cum + c // 2) * workers // max(1, total)))
        cum += c
    return out


def ensure_dir(final: str) -> None:
    """Make ``final`` a directory, as :func:`~rcds.client.get.fs.prepare_dir` does, where another
    worker may be doing the same at the same moment (either may win; a file or symlink there is
    replaced, never followed)."""
    for _ in range(8):
        try:
            os.mkdir(final, 0o700)
            return
        except FileExistsError:
            pass
        try:
            prepare_dir(Path(final))
            return
        except (FileNotFoundError, FileExistsError):
            continue  # the other worker replaced it meanwhile: look again
    raise StorageError(f"cannot create the directory {final}: it keeps changing")


def ancestors(rel: str) -> list[str]:
    """The relative paths of the directories above ``rel``, top first (``a``, ``a/b`` for ``a/b/c``)."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class Split(NamedTuple):
    """The directories of the tree (walk order, rows) and which share each belongs to."""

    dirs: list[LeanDir]
    owner: list[int]
    """The share of each directory of :attr:`dirs`."""
    firsts: dict[int, int]
    """The first directory of each share."""
    finish: dict[str, LeanRow]
    """Directories the main process makes too and finishes (by relative path): see the module."""
    dir_rows: dict[str, LeanRow]
    """Each directory's own row, by repository path."""
    cut: int
    """Length of the top's repository path plus one: ``path[cut:]`` is relative."""


def split_tree(dirs: list[LeanDir], top: str, target: str, shares: int) -> tuple[Split, ShareSummary]:
    """Split the walked tree ``dirs`` of ``top`` (copied to ``target``) into ``shares``, in the main
    process before the fork (the workers inherit it); the counts and what the main process does."""
    cut = len(top) + 1
    files = nbytes = ndirs = nlinks = special = 0
    legacy = False
    extras: list[tuple[str, str, str, LeanRow, Catalog]] = []
    costs = []  # as owners() weighs them, in the same pass over the rows
    total = 0
    dir_rows: dict[str, LeanRow] = {}
    for path, cat, rows in dirs:
        rel_dir = path[cut:]
        prefix = f"{rel_dir}/" if rel_dir else ""
        if not rel_dir and any(r[0] == LEGACY_STATE_FILE for r in rows):
            legacy = True
        c = FILE_COST
        for row in rows:
            name, mode, size, _, _, flags, hardlinks, raw, _, _, _ = row
            kind = mode & _S_IFMT
            if kind == _S_IFREG:
                c += FILE_COST + size
                if (
                    not flags & _NOT_ONE_OBJECT
                    and not hardlinks >> 32
                    and size <= FAST_MAX
                    and type(raw) is bytes
                    and len(raw) == 20
                    and _ALGORITHMS[(flags >> 8) & 7] is not None
                ):  # the usual file (as _usual says, inline: once per row)
                    files += 1
                    nbytes += size
                else:
                    rel = prefix + name
                    extras.append((rel, f"{path}/{name}", f"{target}/{rel}", row, cat))
            elif kind == _S_IFDIR:
                ndirs += 1
                dir_rows[f"{path}/{name}"] = row
            elif kind == _S_IFLNK:
                nlinks += 1
            else:
                special += 1
        costs.append(c)
        total += c
    owner = _runs(costs, total, shares)
    firsts: dict[int, int] = {}
    for i, w in enumerate(owner):
        firsts.setdefault(w, i)
    spine: set[str] = set()
    for i in firsts.values():
        if i:
            spine.update(ancestors(dirs[i][0][cut:]))
    for e in extras:  # their directories are made by the main process too (ensure_dir)
        spine.update(ancestors(e[0]))
    finish = {rel: dir_rows[f"{top}/{rel}"] for rel in spine}
    summary = ShareSummary(
        files, nbytes, ndirs - len(finish), nlinks, special, legacy, extras, sorted(finish.items())
    )
    return Split(dirs, owner, firsts, finish, dir_rows, cut), summary


class _Share:
    """The planning and writing of one worker's share."""

    def __init__(self, task: ShareTask, conn: Sender) -> None:
        self.task = task
        self.conn = conn
        self.jobs: list[WireJob] = []
        self.recs: list[list[tuple[str, str]]] = []
        self.pending: list[int] = []
        self.written: list[tuple[str, str]] = []
        """Files complete and not reported yet (empty ones)."""

    def run(self, s: int, fetcher: Fetcher, source: CachedSource | None, stats: dict[str, int]) -> None:
        """Copy share ``s``: its directories, files and symbolic links; then finish its directories."""
        task = self.task
        split = task.split
        dirs, owner, cut, finish, target = split.dirs, split.owner, split.cut, split.finish, task.target
        first = split.firsts.get(s)
        if first is None:
            return
        if first:
            for rel in ancestors(dirs[first][0][cut:]):
                ensure_dir(f"{target}/{rel}")
        done = task.done
        index: dict[tuple[bytes, bool], int] = {}
        self.jobs = jobs = cast(list[WireJob], [])
        self.recs = recs = cast(list[list[tuple[str, str]]], [])
        links: list[tuple[str, LeanRow, str]] = []
        mine: list[tuple[str, str]] = []
        skipped = skipped_bytes = 0
        for i in range(first, len(dirs)):
            if owner[i] != s:
                break
            path, _, rows = dirs[i]
            rel_dir = path[cut:]
            final_dir = f"{target}/{rel_dir}/" if rel_dir else f"{target}/"
            prefix = f"{rel_dir}/" if rel_dir else ""
            if rel_dir:
                if rel_dir in finish:
                    ensure_dir(final_dir[:-1])
                else:
                    try:
                        try:
                            os.mkdir(final_dir[:-1], 0o700)
                        except FileExistsError:
                            prepare_dir(Path(final_dir[:-1]))
                    except OSError as exc:
                        raise StorageError(f"cannot create the directory {final_dir[:-1]}: {exc}") from exc
                    mine.append((final_dir[:-1], path))
            repo_dir = f"{path}/"
            for row in rows:
                name, mode, size, mtime, ns, flags, hardlinks, raw, _, _, _ = row
                kind = mode & _S_IFMT
                if kind == _S_IFLNK:
                    links.append((final_dir + name, row, repo_dir + name))
                if kind != _S_IFREG or not _usual(size, flags, hardlinks, raw):
                    continue
                v = (flags >> 8) & 7
                rel = prefix + name
                key = raw.hex() + _IDENTIFIERS[v]  # type: ignore[union-attr]
                final = final_dir + name
                if done and done.get(rel) == key and _current(final, size, mtime, ns):
                    skipped += 1
                    skipped_bytes += size
                    continue
                t = (final, repo_dir + name, mode, size, mtime, ns)
                if size == 0:
                    write_file(final, _NEW(Target, t), b"")
                    self.written.append((rel, key))
                    continue
                compressed = not (flags >> 11) & 7
                ok = (raw, compressed)
                j = index.get(ok)  # type: ignore[arg-type]
                if j is None:
                    index[ok] = len(jobs)  # type: ignore[index]
                    jobs.append((raw, _VALUES[v], _FILE, size, compressed, [t]))  # type: ignore[arg-type]
                    recs.append([(rel, key)])
                else:
                    jobs[j][5].append(t)  # type: ignore[attr-defined]
                    recs[j].append((rel, key))
        if skipped:
            self.conn.send(("s", skipped, skipped_bytes))
        self.fetch(fetcher, source, stats)
        for final, row, path in links:
            write_symlink(final, lean_dirent(path, row))
        for final, path in reversed(mine):
            finish_dir(final, lean_dirent(path, split.dir_rows[path]))

    def report(self) -> None:
        """Send the files completed since the last report."""
        pending, self.pending = self.pending, []
        written, self.written = self.written, []
        if pending or written:
            recs = self.recs
            nbytes = sum([self.jobs[i][3] * len(recs[i]) for i in pending])
            self.conn.send(("p", written + [r for i in pending for r in recs[i]], nbytes))

    def after(self, i: int) -> None:
        self.pending.append(i)
        if len(self.pending) >= REPORT_EVERY:
            self.report()

    def fetch(self, fetcher: Fetcher, source: CachedSource | None, stats: dict[str, int]) -> None:
        """Download, verify and write every object of the share (cached ones copied)."""
        setup = self.task.setup
        buckets = self.task.buckets
        jobs = self.jobs
        after: Callable[[int], None] = self.after
        if source is not None and buckets and any(j[0][0] in buckets for j in jobs):
            left = self._from_cache(source)
            jobs = [self.jobs[i] for i in left]

            def after_left(j: int) -> None:
                self.after(left[j])

            after = after_left
        if source is not None and source.alien is not None:
            run_jobs(source, read_jobs(jobs), setup.keep)
            for j in range(len(jobs)):
                after(j)
        elif jobs:
            stats["network"] += run_batch(fetcher, jobs, source if setup.keep else None, after)
        self.report()

    def _from_cache(self, source: object) -> list[int]:
        """Copy the objects found in the local cache; the indices of the jobs left to download."""
        from rcds.client.cache.source import CachedSource

        assert isinstance(source, CachedSource)
        has = source.presence()
        buckets = self.task.buckets
        left = []
        for i, job in enumerate(self.jobs):
            if job[0][0] not in buckets:
                left.append(i)
                continue
            h = ContentHash(_worker._ALGORITHMS[job[1]], job[0])
            obj = source.cached(h, ObjectKind.FILE, job[3]) if has(h, ObjectKind.FILE) else None
            if obj is None:
                left.append(i)
                continue
            with obj:
                for t in job[5]:
                    obj.seek(0)
                    write_file(t[0], _NEW(Target, t), fill=_copier(obj, job[3]))
            self.after(i)
        return left


def _usual(size: int, flags: int, hardlinks: int, raw: bytes | None) -> bool:
    """A regular file of one object that a worker writes (not chunked, external, a hard link or
    over :data:`FAST_MAX`; a known hash algorithm)."""
    return not (
        flags & _NOT_ONE_OBJECT
        or hardlinks >> 32
        or type(raw) is not bytes
        or len(raw) != 20
        or _ALGORITHMS[(flags >> 8) & 7] is None
        or size > FAST_MAX
    )


def _copier(obj: object, size: int) -> Callable[[int], int]:
    def fill(fd: int) -> int:
        return copy_into(obj, fd, size)  # type: ignore[arg-type]

    return fill


def _current(final: str, size: int, mtime: int, ns: int | None) -> bool:
    try:
        st = os.lstat(final)
    except OSError:
        return False
    return (
        st.st_mode & _S_IFMT == _S_IFREG
        and st.st_size == size
        and st.st_mtime_ns == mtime * 10**9 + (ns or 0)
    )


def run_share(task: ShareTask, k: int, conn: Sender) -> int:
    """Worker ``k`` (forked): the split (sent by worker 0), then shares until none is left;
    returns the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    signal.signal(signal.SIGTERM, _worker._stop)
    with suppress(OSError):
        # A session of its own, as the batch workers (rcds.workerproc) have: Ctrl-C on a terminal
        # reaches only the main process, and where the kernel groups CPU time by session
        # (autogroups) each worker gets its own share, not a third of the caller's.
        os.setsid()
    read_umask()
    share = _Share(task, conn)
    source: CachedSource | None = None
    fetcher: Fetcher | None = None
    try:
        setup = task.setup
        fetcher = setup.fetcher()
        fetcher.pipeline_window = _worker.WINDOW
        source = setup.open(fetcher) if setup.uses_caches or task.buckets else None
        stats = {"local": 0, "alien": 0, "network": 0}
        while True:
            token = os.read(task.tokens, 1)
            if not token:
                break
            share.run(token[0], fetcher, source, stats)
        if source is not None:
            source.flush()
            for where, n in source.stats.items():
                stats[where] += n
        conn.send(("done", stats))
        return 0
    except RcdsError as exc:
        _tell(conn, type(exc).__name__, str(exc))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except (BrokenPipeError, ConnectionResetError):  # the main process is gone
        pass
    except BaseException as exc:  # a bug: tell the main process what happened
        import traceback

        text = "".join(traceback.format_exception_only(exc)).strip()
        _tell(conn, "", f"{text} (pid {os.getpid()})")
        traceback.print_exc()
    finally:
        if source is not None:
            with suppress(Exception):
                source.close()
        if fetcher is not None:
            fetcher.close()
    return 1


def _tell(conn: Sender, kind: str, message: str) -> None:
    with suppress(OSError):
        conn.send(("error", kind, message))
