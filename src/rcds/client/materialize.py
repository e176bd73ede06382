"""``rcds get``: copy a repository subtree to a local directory, in parallel and resumably.

The subtree is walked on one revision (kept mounted for the whole copy) and planned first: every
file with the object(s) it needs. Files already complete from an earlier run are skipped; files
whose object is in the local cache are copied from it; the other single-object files are
downloaded in pipelined batches (:func:`rcds.client.bulk.fetch_objects`: one verified object
per distinct hash, written to every file that has it as it arrives); with many objects this
runs in worker processes (:mod:`rcds.client.getprocs`), else in two threads. Chunked and very large
files are fetched piece by piece by worker threads (``workers``). Every file is written to a
temp file next to its destination and renamed into place once complete, with its mode and
modification time set, so an interrupted copy never leaves a partial file under a real name.
Symbolic links are created as links and never followed; members of a hard-link group become
hard links of one file; directories get their modes and times last.

Nothing is written outside the destination: names are checked (no ``..``, ``/`` or NUL), and
existing symlinks or files where a directory belongs are replaced, never followed.

Resuming: a small state file ``.rcds-get.json`` in the destination directory records, for
every completed file, the content it was written with. A file whose record matches the
catalog's content and whose size and modification time on disk match the catalog is skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rcds.client.bulk import BULK_MAX_OBJECT, Wanted, fetch_objects
from rcds.client.files import Piece, pieces_of
from rcds.client.getfs import (
    STATE_FILE,
    GetState,
    check_name,
    content_key,
    copy_into,
    finish_dir,
    hard_link,
    mtime_ns,
    prepare_dir,
    read_umask,
    write_file,
    write_symlink,
)
from rcds.client.getprocs import MIN_OBJECTS, GetProcesses, configured_processes
from rcds.client.getworker import Job, Setup, Target
from rcds.client.mounted import Located
from rcds.client.repository import Repository
from rcds.errors import InputError, IntegrityError, StorageError
from rcds.format.dirent import Dirent
from rcds.format.hashes import ContentHash, ObjectKind

log = logging.getLogger("rcds.client")

__all__ = ["STATE_FILE", "GetReport", "Progress", "content_key", "materialize"]

SAVE_EVERY = 2.0
BULK_LANES = 2
"""Downloader threads of the batch path (inflate, hash and write release the GIL)."""


@dataclass(slots=True)
class Progress:
    """Counters passed to the progress callback."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class GetReport:
    """What :func:`materialize` did."""

    target: Path
    revision: int
    files: int
    directories: int
    symlinks: int
    hardlinks: int
    bytes: int
    skipped: int
    special_skipped: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _File:
    rel: str
    entry: Dirent
    pieces: tuple[Piece, ...]
    key: str


def materialize(
    repo: Repository,
    source_path: str,
    dest: Path,
    *,
    workers: int = 8,
    progress: Callable[[Progress], None] | None = None,
    keep_in_cache: bool = False,
    processes: int | None = None,
) -> GetReport:
    """Copy ``source_path`` of ``repo`` to ``dest`` (see the module docstring).

    A directory becomes ``dest`` itself (created if needed); a file is written to ``dest``, or
    into ``dest`` when that is an existing directory. Objects already in the local cache are
    copied from it; with ``keep_in_cache`` the downloaded ones are added to it too.
    ``processes`` worker processes download when there are many objects (see
    :mod:`rcds.client.getprocs`; ``None``: ``RCDS_GET_PROCESSES`` or the CPU count, ``0``: none).
    """
    t0 = time.monotonic()
    dest = Path(dest)
    read_umask()
    with repo.using() as m:
        top = m.resolve(source_path, follow=True)
        if top.entry.is_dir:
            target = dest
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise InputError(f"{dest} exists and is not a directory; choose another destination")
        else:
            name = source_path.rstrip("/").rsplit("/", 1)[-1] or top.entry.name
            if name in (".", ".."):
                name = top.entry.name
            target = dest / check_name(name, source_path) if dest.is_dir() else dest
        plan = _Plan(
            repo, m.revision, top, target, configured_processes() if processes is None else processes
        )
        collecting = gc.isenabled()
        gc.disable()  # the plan holds ~10 objects per file: no need to scan them over and over
        try:
            for loc in m.walk(top):
                plan.add(loc)
            return plan.run(workers, progress, keep_in_cache, t0)
        finally:
            plan.close_processes()
            if collecting:
                gc.enable()


class _Plan:
    def __init__(self, repo: Repository, revision: int, top: Located, target: Path, processes: int) -> None:
        self.repo = repo
        self.processes = processes
        self.procs: GetProcesses | None = None
        self.revision = revision
        self.top = top
        self.target = target
        self._target = str(target)
        self.is_dir = top.entry.is_dir
        self.dirs: list[tuple[str, Dirent]] = []
        self.files: list[_File] = []
        self.links: list[tuple[str, Dirent]] = []
        self.groups: dict[tuple[str, int], list[_File]] = {}
        self.special = 0
        base = top.entry.path
        self._cut = len(base) + 1

    def rel(self, entry: Dirent) -> str:
        if entry.path == self.top.entry.path:
            return ""
        rel = entry.path[self._cut :]
        for part in rel.split("/"):
            check_name(part, entry.path)
        return rel

    def add(self, loc: Located) -> None:
        e = loc.entry
        rel = self.rel(e)
        if e.is_dir:
            self.dirs.append((rel, e))
        elif e.is_symlink:
            self.links.append((rel, e))
        elif e.is_regular:
            pieces = tuple(pieces_of(e, loc.catalog))
            f = _File(rel, e, pieces, content_key(e, pieces))
            if e.hardlink_group and e.link_count > 1:
                self.groups.setdefault((loc.catalog.mountpoint, e.hardlink_group), []).append(f)
            else:
                self.files.append(f)
                if len(self.files) == MIN_OBJECTS and self.processes:
                    self._start_processes()
        else:
            self.special += 1

    def _start_processes(self) -> None:
        """Start the worker processes (they start up while the walk goes on); threads if they cannot."""
        try:
            self.procs = GetProcesses(self.processes)
        except OSError as exc:  # e.g. no more processes allowed
            log.warning("cannot start download worker processes (%s); downloading in this process", exc)
            self.processes = 0

    def close_processes(self) -> None:
        """Stop the worker processes (if any were started and are still running)."""
        if self.procs is not None:
            self.procs.close(kill=True)
            self.procs = None

    def path(self, rel: str) -> str:
        return f"{self._target}/{rel}" if rel else self._target

    def run(
        self, workers: int, progress: Callable[[Progress], None] | None, keep: bool, t0: float
    ) -> GetReport:
        primaries = [g[0] for g in self.groups.values()]
        todo = self.files + primaries
        prog = Progress(files_total=len(todo), bytes_total=sum(f.entry.size for f in todo))
        self._state = state = GetState(self.target / STATE_FILE if self.is_dir else None, self.repo.fqrn)
        self._prog = prog
        self._progress = progress
        self._last_save = time.monotonic()
        self._lock = threading.Lock()
        self._abort = threading.Event()
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if self.is_dir:
                for rel, _ in self.dirs:
                    prepare_dir(Path(self.path(rel)))
        except OSError as exc:
            raise StorageError(f"cannot create directories under {self.target}: {exc}") from exc

        bulk: list[_File] = []
        single: list[_File] = []
        for f in todo:
            if self._is_current(f, state):
                prog.skipped += 1
                prog.files_done += 1
                prog.bytes_done += f.entry.size
            elif f.entry.size == 0:  # nothing to fetch (whatever object an empty file names)
                write_file(self.path(f.rel), f.entry, b"")
                self._done(f)
            elif len(f.pieces) == 1 and f.pieces[0].size <= BULK_MAX_OBJECT:
                bulk.append(f)
            else:
                single.append(f)
        try:
            self._write_bulk(bulk, keep)
            self._write_singles(single, workers, keep)
            hardlinks = self._link_groups()
            for rel, e in self.links:
                write_symlink(self.path(rel), e)
            for rel, e in reversed(self.dirs):
                finish_dir(self.path(rel), e)
        finally:
            state.save(self.revision)
        if progress is not None:
            progress(prog)
        return GetReport(
            target=self.target,
            revision=self.revision,
            files=len(todo),
            directories=len(self.dirs),
            symlinks=len(self.links),
            hardlinks=hardlinks,
            bytes=prog.bytes_total,
            skipped=prog.skipped,
            special_skipped=self.special,
            seconds=time.monotonic() - t0,
        )

    def _done(self, f: _File) -> None:
        """Record a completed file (resume state, progress); save the state now and then."""
        self._state.record(f.rel, f.key)
        with self._lock:
            prog = self._prog
            prog.files_done += 1
            prog.bytes_done += f.entry.size
            if self._progress is not None:
                self._progress(prog)
            now = time.monotonic()
            if now - self._last_save <= SAVE_EVERY:
                return
            self._last_save = now
        self._state.save(self.revision)

    def _is_current(self, f: _File, state: GetState) -> bool:
        if state.done.get(f.rel) != f.key:
            return False
        try:
            st = os.lstat(self.path(f.rel))
        except OSError:
            return False
        return (
            st.st_mode & 0o170000 == 0o100000
            and st.st_size == f.entry.size
            and st.st_mtime_ns == mtime_ns(f.entry)
        )

    def _write_bulk(self, files: list[_File], keep: bool) -> None:
        """Single-object files: from the local cache, else downloaded in batches (one fetch per object)."""
        by_object: dict[tuple[ContentHash, ObjectKind, bool], list[_File]] = {}
        for f in files:
            p = f.pieces[0]
            by_object.setdefault((p.hash, p.kind, f.entry.compressed), []).append(f)
        source = self.repo.source
        wanted: list[Wanted] = []
        users: list[list[_File]] = []
        for (h, kind, compressed), group in by_object.items():
            size = group[0].pieces[0].size
            obj = source.cached(h, kind, size)
            if obj is None:
                wanted.append(Wanted(h, kind, size, compressed))
                users.append(group)
                continue
            with obj:
                for f in group:
                    obj.seek(0)
                    write_file(self.path(f.rel), f.entry, fill=functools.partial(_copy_from, obj, size))
                    self._done(f)
        if not wanted:
            return
        if self.procs is not None and len(wanted) >= MIN_OBJECTS:
            self._write_bulk_in_processes(self.procs, wanted, users, keep)
            return
        # Several downloaders, each with its own pipelined batches: inflating, hashing and
        # writing release the GIL, so they overlap with each other and with the network.
        lanes = max(1, min(BULK_LANES, len(wanted) // 64))
        step = -(-len(wanted) // lanes)  # contiguous shares: lanes mostly write to different directories
        shares = [list(range(k, min(k + step, len(wanted)))) for k in range(0, len(wanted), step)]

        def lane(share: list[int]) -> None:
            for i, plain in fetch_objects(source, [wanted[j] for j in share], keep=keep):
                if self._abort.is_set():
                    return  # another lane failed
                for f in users[share[i]]:
                    write_file(self.path(f.rel), f.entry, plain)
                    self._done(f)

        if lanes == 1:
            lane(shares[0])
            return
        with cf.ThreadPoolExecutor(lanes, thread_name_prefix="rcds-get-bulk") as pool:
            futures = [pool.submit(lane, share) for share in shares]
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
            except BaseException:
                self._abort.set()
                raise

    def _write_bulk_in_processes(
        self, procs: GetProcesses, wanted: list[Wanted], users: list[list[_File]], keep: bool
    ) -> None:
        """The batch path in worker processes (:mod:`rcds.client.getprocs`)."""
        jobs = [
            Job.of(
                w.hash, w.kind, w.size, w.compressed, tuple(_target(self.path(f.rel), f.entry) for f in group)
            )
            for w, group in zip(wanted, users, strict=True)
        ]

        def done(part: range) -> None:
            for j in part:
                for f in users[j]:
                    self._done(f)

        source = self.repo.source
        try:
            procs.run(Setup.of(source, keep), jobs, done)
        finally:
            self.procs = None
            for where, n in procs.stats.items():
                source.count(where, n)

    def _write_singles(self, files: list[_File], workers: int, keep: bool) -> None:
        """Chunked and large files: pieces fetched one by one through the caches, in worker threads."""
        if not files:
            return
        with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="rcds-get") as pool:
            futures = {pool.submit(self._write_pieces, f, keep): f for f in files}
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
                    self._done(futures[fut])
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise

    def _write_pieces(self, f: _File, keep: bool) -> None:
        source = self.repo.source

        def fill(fd: int) -> int:
            written = 0
            for p in f.pieces:
                with source.open_object(
                    p.hash, p.kind, size=p.size, compressed=f.entry.compressed, keep=keep
                ) as obj:
                    if copy_into(obj, fd, p.size) != p.size:
                        raise IntegrityError(
                            f"{f.entry.path}: object {p.hash.hex} is shorter than {p.size} bytes",
                            f.entry.path,
                        )
                written += p.size
            return written

        write_file(self.path(f.rel), f.entry, fill=fill)

    def _link_groups(self) -> int:
        count = 0
        for group in self.groups.values():
            primary = self.path(group[0].rel)
            for f in group[1:]:
                count += hard_link(primary, self.path(f.rel))
        return count


def _target(final: str, e: Dirent) -> Target:
    return Target(final, e.path, e.mode, e.size, e.mtime, e.mtimens)


def _copy_from(obj: BinaryIO, size: int, fd: int) -> int:
    return copy_into(obj, fd, size)
