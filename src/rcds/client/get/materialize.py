"""``rcds get``: copy a repository subtree to a local directory, in parallel and resumably.

The subtree is walked on one revision (kept mounted for the whole copy) by
:func:`rcds.client.tree.rows.walk_rows` (each directory's rows as plain tuples, names checked).
A large tree (:data:`rcds.client.get.split.SPLIT_MIN_ROWS` rows or more) is then split among
forked workers that plan their own shares (:mod:`rcds.client.get.split`): this process handles
only what they leave to it. Otherwise every entry is planned in turn: directories are created
at once (parents come first), files already complete from an earlier run are skipped, empty
files written, and the single-object files go to :class:`~rcds.client.get.downloads.Downloads`,
which copies cached objects from the local cache and downloads the others in pipelined batches,
one verified download per distinct object, in worker processes that start while the plan is
still being made (or in two threads for a small copy). Chunked and very large files are
fetched by worker threads (``workers``, a file each) after the plan, their pieces pipelined and
written at their
offsets. Files are written as :func:`rcds.client.get.fs.write_file` does (in place when the
name is free, else through a temp file and a rename), with their mode and modification time,
and only recorded once complete. Symbolic links are created as links and never followed;
members of a hard-link group become hard links of one file; directories get their modes and
times last.

Nothing is written outside the destination: names are checked (no ``..``, ``/`` or NUL, none
twice in a directory), and existing symlinks or files where a directory belongs are replaced,
never followed. An error stops the copy where it is; what was written is complete and recorded.

Resuming: a small state file in the local cache directory, named after the destination
(:mod:`rcds.client.get.state`; never in the copied tree), records for every completed
file the content it was written with. A file whose record matches the catalog's content and
whose size and modification time on disk match the catalog is skipped. The state stays after a
complete copy: a later copy into the same destination (e.g. of a new revision) writes only what
changed. A state file ``.rcds-get.json`` left in the destination by an older version is read
and, once its records are saved in the cache, removed (unless the repository has that name).
"""

from __future__ import annotations

import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from rcds.client.fetch.bulk import BULK_MAX_OBJECT
from rcds.client.get.downloads import Downloads, PlannedFile
from rcds.client.get.fs import (
    check_name,
    content_key,
    finish_dir,
    hard_link,
    mtime_ns,
    prepare_dir,
    read_umask,
    write_file,
    write_symlink,
)
from rcds.client.get.pieces import write_pieced
from rcds.client.get.procs import configured_processes
from rcds.client.get.report import GetReport, Progress
from rcds.client.get.share import ShareSummary, ShareTask, ancestors, ensure_dir
from rcds.client.get.split import SplitWorkers, split_task
from rcds.client.get.state import LEGACY_STATE_FILE, GetState, state_path
from rcds.client.repository import Repository
from rcds.client.tree.files import Piece, pieces_of
from rcds.client.tree.mounted import Located
from rcds.client.tree.rows import lean_dirent, lean_row, walk_rows
from rcds.errors import InputError, StorageError
from rcds.format.dirent import (
    ALGORITHM_OF_FLAG_VALUE,
    FLAG_CHUNKED,
    FLAG_EXTERNAL,
    Dirent,
)
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.repo.catalog import Catalog, LeanRow

__all__ = ["GetReport", "Progress", "content_key", "materialize"]

log = logging.getLogger("rcds.client")

SAVE_EVERY = 2.0
"""Seconds between saves of the resume state during a copy."""

_NEW = tuple.__new__
_FILE = ObjectKind.FILE
_NOT_ONE_OBJECT = FLAG_CHUNKED | FLAG_EXTERNAL
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
_ALGORITHMS = ALGORITHM_OF_FLAG_VALUE
_IDENTIFIERS = tuple("" if a is None else a.identifier for a in ALGORITHM_OF_FLAG_VALUE)
"""The hash string suffix of each value of flag bits 8-10 (a file's content key is its hash string)."""


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
    :mod:`rcds.client.get.downloads`; ``None``: ``RCDS_GET_PROCESSES`` or the CPU count, ``0``:
    none). ``progress`` is called once the walk is over, and after each file from then on.
    """
    t0 = time.monotonic()
    dest = Path(dest)
    read_umask()
    with repo.using() as m:
        top = m.resolve(source_path, follow=True)
        if top.entry.is_dir:
            top = m.inside(top)
            target = dest
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise InputError(f"{dest} exists and is not a directory; choose another destination")
        else:
            name = source_path.rstrip("/").rsplit("/", 1)[-1] or top.entry.name
            if name in (".", ".."):
                name = top.entry.name
            target = dest / check_name(name, source_path) if dest.is_dir() else dest
        n = configured_processes() if processes is None else processes
        plan = _Plan(repo, m.revision, top, target, _Options(workers, progress, keep_in_cache, n))
        collecting = gc.isenabled()
        gc.disable()  # the plan holds a few objects per file: no need to scan them over and over
        try:
            plan.add_top()
            split = None
            if top.entry.is_dir:
                dirs = list(walk_rows(m, top))
                done = plan.state.done
                split = split_task(dirs, top.entry.path, str(target), repo.source, keep_in_cache, done, n)
            if split is None or not plan.run_split(*split):
                for path, cat, rows in dirs if top.entry.is_dir else ():
                    plan.add_rows(path, cat, rows)
                plan.run()
            return plan.report(time.monotonic() - t0)
        finally:
            plan.close()
            del plan  # no cycles: freed now, not left to a collection of everything it held
            if collecting:
                gc.enable()


class _Options(NamedTuple):
    workers: int
    progress: Callable[[Progress], None] | None
    keep: bool
    processes: int


class _Plan:
    """The copy of one subtree: files are planned as the walk finds them, downloads start at once.

    The walk gives each directory's rows as plain tuples (:mod:`rcds.client.tree.rows`); the
    usual file (one object, not a hard link) becomes its :class:`PlannedFile` straight from its
    row, with no :class:`Dirent`; the other entries (directories, symlinks, chunked files, hard
    links) are rarer and planned from a :class:`Dirent` made of their row.
    """

    def __init__(
        self, repo: Repository, revision: int, top: Located, target: Path, options: _Options
    ) -> None:
        self.repo = repo
        self.revision = revision
        self.top = top
        self.target = target
        self.options = options
        self._target = str(target)
        self.is_dir = top.entry.is_dir
        self.dirs: list[tuple[str, Dirent]] = []
        self.singles: list[PlannedFile] = []
        self.links: list[tuple[str, Dirent]] = []
        self.groups: dict[tuple[str, int], list[PlannedFile]] = {}
        self.special = 0
        self.hardlinks = 0
        self.counted_dirs = 0
        self.counted_links = 0
        """Directories and symlinks made by forked workers (:meth:`run_split`)."""
        self.split: SplitWorkers | None = None
        self._cut = len(top.entry.path) + 1
        self._top_path = top.entry.path
        self.state = GetState(
            state_path(repo.cache.dir, target) if self.is_dir else None,
            repo.fqrn,
            target,
            legacy=target / LEGACY_STATE_FILE,
        )
        self._done_keys = bool(self.state.done)
        """Files of an earlier copy are recorded: each planned file is checked against them."""
        self.legacy_is_an_entry = False
        """The repository has an entry where older versions kept the state: it is not theirs."""
        self.prog = Progress()
        self._progress: Callable[[Progress], None] | None = None  # silent until the walk is over
        self._last_save = time.monotonic()
        self._lock = threading.Lock()
        self.downloads = Downloads(
            repo.source, self.path, self._done, options.keep, options.processes, self._done_many
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc

    def path(self, rel: str) -> str:
        return f"{self._target}/{rel}" if rel else self._target

    def add_top(self) -> None:
        """Plan the top entry of the copy (the target itself)."""
        self._add_entry("", self.top.entry.path, self._target, lean_row(self.top), self.top.catalog)

    def add_rows(self, path: str, cat: Catalog, rows: list[LeanRow]) -> None:
        """Plan the entries of directory ``path`` (rows of ``cat``, names checked: see
        :func:`~rcds.client.tree.rows.walk_rows`); their directory was planned before."""
        rel_dir = path[self._cut :]
        prefix = f"{rel_dir}/" if rel_dir else ""
        if not rel_dir and LEGACY_STATE_FILE in (r[0] for r in rows):
            self.legacy_is_an_entry = True
        final_dir = f"{self._target}/{prefix}"
        repo_dir = f"{path}/"
        add_file = self._add_file
        download = self.downloads.add
        direct = not self._done_keys  # no earlier copy to compare with: no check per file
        files = nbytes = 0
        for row in rows:
            name, mode, size, mtime, ns, flags, hardlinks, raw, _, _, _ = row
            if (
                mode & _S_IFMT == _S_IFREG
                and size > 0
                and not flags & _NOT_ONE_OBJECT
                and not hardlinks >> 32
                and type(raw) is bytes
                and len(raw) == 20
            ):  # the usual file: planned from its row
                v = (flags >> 8) & 7
                algo = _ALGORITHMS[v]
                if algo is not None:
                    h = _NEW(ContentHash, (algo, raw))
                    f = _NEW(
                        PlannedFile,
                        (
                            prefix + name,
                            (final_dir + name, repo_dir + name, mode, size, mtime, ns),
                            (_NEW(Piece, (0, size, h, _FILE)),),
                            raw.hex() + _IDENTIFIERS[v],
                            not (flags >> 11) & 7,
                        ),
                    )
                    if direct and size <= BULK_MAX_OBJECT:  # what _add_file does with it
                        files += 1
                        nbytes += size
                        download(f)
                    else:
                        add_file(f)
                    continue
            self._add_entry(prefix + name, repo_dir + name, final_dir + name, row, cat)
        self.prog.files_total += files
        self.prog.bytes_total += nbytes

    def _add_entry(self, rel: str, path: str, final: str, row: LeanRow, cat: Catalog) -> None:
        """Plan any entry (the top, or a row :meth:`add_rows` leaves to it)."""
        e = lean_dirent(path, row)
        kind = e.mode & _S_IFMT
        if kind == _S_IFREG:
            pieces = tuple(pieces_of(e, cat))
            attrs = (final, path, e.mode, e.size, e.mtime, e.mtimens)
            f = _NEW(PlannedFile, (rel, attrs, pieces, content_key(e, pieces), e.compressed))
            if e.hardlinks >> 32 and e.link_count > 1:
                self.groups.setdefault((cat.mountpoint, e.hardlink_group), []).append(f)
            else:
                self._add_file(f)
        elif kind == _S_IFDIR:
            self.dirs.append((rel, e))
            if self.is_dir:
                try:
                    try:
                        os.mkdir(final, 0o700)  # the usual case: a fresh copy
                    except FileExistsError:
                        prepare_dir(Path(final))
                except OSError as exc:
                    raise StorageError(f"cannot create the directory {final}: {exc}") from exc
        elif kind == _S_IFLNK:
            self.links.append((rel, e))
        else:
            self.special += 1

    def _add_file(self, f: PlannedFile) -> None:
        prog = self.prog
        size = f.attrs[3]
        prog.files_total += 1
        prog.bytes_total += size
        if self._done_keys and self._is_current(f):
            prog.skipped += 1
            prog.files_done += 1
            prog.bytes_done += size
        elif size == 0:  # nothing to fetch (whatever object an empty file names)
            write_file(self.path(f.rel), f.target(), b"")
            self._done(f)
        elif len(f.pieces) == 1 and f.pieces[0].size <= BULK_MAX_OBJECT:
            self.downloads.add(f)
        else:
            self.singles.append(f)

    def run_split(self, task: ShareTask, summary: ShareSummary) -> bool:
        """Copy the tree with forked workers, each taking shares of it (:mod:`rcds.client.get.split`);
        write what they leave to this process; finish. False if no process could be started
        (nothing was done: the usual plan follows, in this process)."""
        self.downloads.processes = 0  # what is left here is little: no other worker processes
        try:
            self.split = workers = SplitWorkers(task, self.options.processes)
        except OSError as exc:  # e.g. no more processes allowed
            log.warning("cannot start download worker processes (%s); downloading in this process", exc)
            return False
        workers.on_records = self._done_records
        workers.on_skipped = self._skipped
        top = self.top.entry.path
        cut = len(self.dirs)
        prog = self.prog
        prog.files_total += summary.files
        prog.bytes_total += summary.bytes
        self.counted_dirs += summary.directories
        self.counted_links += summary.symlinks
        self.special += summary.special
        self.legacy_is_an_entry |= summary.legacy_is_an_entry
        above = sorted({a for e in summary.extras for a in ancestors(e[0])})
        for rel in above:  # a worker may not have made them yet: made here too, as it does
            ensure_dir(self.path(rel))
        for rel, path, final, row, cat in summary.extras:
            self._add_entry(rel, path, final, row, cat)
        for rel, row in summary.finish:
            self.dirs.append((rel, lean_dirent(f"{top}/{rel}", row)))
        self.dirs[cut:] = sorted(self.dirs[cut:], key=lambda d: d[0])  # parents first
        self.run(workers.wait)
        workers.reap()  # after the directories and the state: the workers exit meanwhile
        for where, n in workers.stats.items():
            self.repo.source.count(where, n)
        return True

    def run(self, during: Callable[[], None] | None = None) -> None:
        """The walk is over: write everything not written yet (while ``during()`` runs, if given)."""
        self._progress = self.options.progress

        def downloads() -> None:
            self.downloads.finish()
            if during is not None:
                during()

        try:
            for group in self.groups.values():
                self._add_file(group[0])
            write_pieced(
                self.repo.source,
                self.singles,
                self.path,
                keep=self.options.keep,
                workers=self.options.workers,
                done=self._done,
                during=downloads,
            )
            self.hardlinks = self._link_groups()
            for rel, e in self.links:
                write_symlink(self.path(rel), e)
            for rel, e in reversed(self.dirs):
                finish_dir(self.path(rel), e)
        finally:
            self.state.save(self.revision)
        if not self.legacy_is_an_entry:  # complete, state saved: the older version's file goes
            self.state.drop_legacy()
        if self._progress is not None:
            self._progress(self.prog)

    def close(self) -> None:
        """Stop the worker processes if still running; save the resume state (after an error too).

        Drops the downloads, which refer back to the plan: the plan is then freed as soon as
        its caller lets go of it, with no garbage collection of its ~10 objects per file.
        """
        downloads: Downloads | None = self.__dict__.pop("downloads", None)
        if downloads is not None:
            downloads.close()
        split, self.split = self.split, None
        if split is not None:
            split.close()

        self.state.save(self.revision)

    def report(self, seconds: float) -> GetReport:
        prog = self.prog
        return GetReport(
            target=self.target,
            revision=self.revision,
            files=prog.files_total,
            directories=len(self.dirs) + self.counted_dirs,
            symlinks=len(self.links) + self.counted_links,
            hardlinks=self.hardlinks,
            bytes=prog.bytes_total,
            skipped=prog.skipped,
            special_skipped=self.special,
            seconds=seconds,
        )

    def _done(self, f: PlannedFile) -> None:
        """Record a completed file (resume state, progress); save the state now and then."""
        self.state.record(f.rel, f.key)
        with self._lock:
            prog = self.prog
            prog.files_done += 1
            prog.bytes_done += f.attrs[3]
            if self._progress is not None:
                self._progress(prog)
            now = time.monotonic()
            if now - self._last_save <= SAVE_EVERY:
                return
            self._last_save = now
        self.state.save(self.revision)

    def _skipped(self, files: int, nbytes: int) -> None:
        """Files a forked worker found complete from an earlier copy."""
        prog = self.prog
        prog.skipped += files
        prog.files_done += files
        prog.bytes_done += nbytes

    def _done_records(self, records: list[tuple[str, str]], nbytes: int) -> None:
        """Files a forked worker completed: ``(rel, key)`` records and their bytes."""
        self.state.record_many(records)
        prog = self.prog
        prog.files_done += len(records)
        prog.bytes_done += nbytes
        if self._progress is not None:
            self._progress(prog)
        now = time.monotonic()
        if now - self._last_save > SAVE_EVERY:
            self._last_save = now
            self.state.save(self.revision)

    def _done_many(self, files: list[PlannedFile]) -> None:
        """:meth:`_done` for a batch of files at once (fewer locks and clock reads)."""
        self.state.record_many([(f.rel, f.key) for f in files])
        with self._lock:
            prog = self.prog
            progress = self._progress
            if progress is None:  # the walk goes on (or no progress shown): the counts at once
                prog.files_done += len(files)
                prog.bytes_done += sum([f.attrs[3] for f in files])
            else:
                for f in files:
                    prog.files_done += 1
                    prog.bytes_done += f.attrs[3]
                    progress(prog)
            now = time.monotonic()
            if now - self._last_save <= SAVE_EVERY:
                return
            self._last_save = now
        self.state.save(self.revision)

    def _is_current(self, f: PlannedFile) -> bool:
        if self.state.done.get(f.rel) != f.key:
            return False
        try:
            st = os.lstat(self.path(f.rel))
        except OSError:
            return False
        return (
            st.st_mode & 0o170000 == 0o100000
            and st.st_size == f.attrs[3]
            and st.st_mtime_ns == mtime_ns(f.target())
        )

    def _link_groups(self) -> int:
        count = 0
        for group in self.groups.values():
            primary = self.path(group[0].rel)
            for f in group[1:]:
                count += hard_link(primary, self.path(f.rel))
        return count
