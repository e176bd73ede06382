"""``rcds get``: copy a repository subtree to a local directory, in parallel and resumably.

The subtree is walked on one revision (kept mounted for the whole copy) in the calling thread,
which also reads the chunk lists; worker threads only fetch objects (through the caches,
verified) and write files. Every file is written to a temp file next to its destination and
renamed into place once complete, with its mode and modification time set, so an interrupted
copy never leaves a partial file under a real name. Symbolic links are created as links and
never followed; members of a hard-link group become hard links of one file; directories get
their modes and times last.

Nothing is written outside the destination: names are checked (no ``..``, ``/`` or NUL), and
existing symlinks or files where a directory belongs are replaced, never followed.

Resuming: a small state file ``.rcds-get.json`` in the destination directory records, for
every completed file, the content it was written with. A file whose record matches the
catalog's content and whose size and modification time on disk match the catalog is skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rcds.client.files import Piece, pieces_of
from rcds.client.mounted import Located
from rcds.client.repository import Repository
from rcds.errors import InputError, IntegrityError, StorageError
from rcds.format.dirent import Dirent

STATE_FILE = ".rcds-get.json"
STATE_VERSION = 1
SAVE_EVERY = 2.0
COPY_BLOCK = 1 << 20


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


def content_key(entry: Dirent, pieces: tuple[Piece, ...]) -> str:
    """What identifies a file's content in the state file: its hash, or a hash of its chunk hashes."""
    if entry.hash is not None and not entry.is_chunked:
        return entry.hash.hex
    h = hashlib.sha1()
    for p in pieces:
        h.update(f"{p.offset}:{p.size}:{p.hash.hex}\n".encode())
    return "chunks-" + h.hexdigest()


def _mtime_ns(entry: Dirent) -> int:
    return entry.mtime * 1_000_000_000 + (entry.mtimens or 0)


def _check_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise IntegrityError(
            f"refusing to write {where!r}: the entry name {name!r} would leave the destination", where
        )
    return name


class _State:
    """The resume records: relative path -> content key."""

    def __init__(self, path: Path | None, fqrn: str) -> None:
        self.path = path
        self.fqrn = fqrn
        self.done: dict[str, str] = {}
        self._lock = threading.Lock()
        self._dirty = False
        if path is None:
            return
        with suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if data.get("version") == STATE_VERSION and data.get("fqrn") == fqrn:
                files = data.get("files", {})
                if isinstance(files, dict):
                    self.done = {str(k): str(v) for k, v in files.items()}

    def record(self, rel: str, key: str) -> None:
        with self._lock:
            self.done[rel] = key
            self._dirty = True

    def save(self, revision: int) -> None:
        if self.path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            text = json.dumps(
                {"version": STATE_VERSION, "fqrn": self.fqrn, "revision": revision, "files": self.done}
            )
            self._dirty = False
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StorageError(f"cannot write the resume state {self.path}: {exc.strerror or exc}") from exc


def _prepare_dir(path: Path) -> None:
    """Make ``path`` a real directory (replacing a file or symlink there, never following it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o700)
        return
    if stat_mod.S_ISDIR(st.st_mode):
        if not st.st_mode & stat_mod.S_IWUSR:
            os.chmod(path, st.st_mode | 0o700)
        return
    os.unlink(path)
    os.mkdir(path, 0o700)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name[:100]}.rcds-{secrets.token_hex(4)}.tmp")


def _copy_into(src: BinaryIO, fd: int, size: int) -> int:
    """Copy an object file into ``fd`` (in the kernel when ``src`` is a real file)."""
    written = 0
    try:
        in_fd = src.fileno()
    except (OSError, AttributeError, ValueError):
        in_fd = -1
    if in_fd >= 0:
        while written < size:
            n = os.sendfile(fd, in_fd, written, size - written)
            if n == 0:
                break
            written += n
        return written
    while True:
        block = src.read(COPY_BLOCK)
        if not block:
            return written
        view = memoryview(block)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            written += n


def _replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``; an existing directory there is removed first if empty."""
    try:
        os.replace(tmp, final)
    except IsADirectoryError:
        os.rmdir(final)  # a directory where a file belongs now; fails (and reports) if not empty
        os.replace(tmp, final)


def materialize(
    repo: Repository,
    source_path: str,
    dest: Path,
    *,
    workers: int = 8,
    progress: Callable[[Progress], None] | None = None,
    keep_in_cache: bool = True,
) -> GetReport:
    """Copy ``source_path`` of ``repo`` to ``dest`` (see the module docstring).

    A directory becomes ``dest`` itself (created if needed); a file is written to ``dest``, or
    into ``dest`` when that is an existing directory. With ``keep_in_cache`` false, objects
    that are not cached yet are not added to the local cache.
    """
    t0 = time.monotonic()
    dest = Path(dest)
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
            target = dest / _check_name(name, source_path) if dest.is_dir() else dest
        plan = _Plan(repo, m.revision, top, target)
        for loc in m.walk(top):
            plan.add(loc)
        return plan.run(workers, progress, keep_in_cache, t0)


class _Plan:
    def __init__(self, repo: Repository, revision: int, top: Located, target: Path) -> None:
        self.repo = repo
        self.revision = revision
        self.top = top
        self.target = target
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
            _check_name(part, entry.path)
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
        else:
            self.special += 1

    def path(self, rel: str) -> Path:
        return self.target / rel if rel else self.target

    def run(
        self, workers: int, progress: Callable[[Progress], None] | None, keep: bool, t0: float
    ) -> GetReport:
        primaries = [g[0] for g in self.groups.values()]
        todo = self.files + primaries
        prog = Progress(files_total=len(todo), bytes_total=sum(f.entry.size for f in todo))
        state = _State(self.target / STATE_FILE if self.is_dir else None, self.repo.fqrn)
        try:
            if self.is_dir:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                for rel, _ in self.dirs:
                    _prepare_dir(self.path(rel))
            else:
                self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create directories under {self.target}: {exc}") from exc

        pending: list[_File] = []
        for f in todo:
            if self._is_current(f, state):
                prog.skipped += 1
                prog.files_done += 1
                prog.bytes_done += f.entry.size
            else:
                pending.append(f)
        last_save = time.monotonic()
        try:
            with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="rcds-get") as pool:
                futures = {pool.submit(self._write_file, f, keep): f for f in pending}
                try:
                    for fut in cf.as_completed(futures):
                        f = futures[fut]
                        fut.result()
                        state.record(f.rel, f.key)
                        prog.files_done += 1
                        prog.bytes_done += f.entry.size
                        if progress is not None:
                            progress(prog)
                        if time.monotonic() - last_save > SAVE_EVERY:
                            state.save(self.revision)
                            last_save = time.monotonic()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
            hardlinks = self._link_groups()
            for rel, e in self.links:
                self._write_symlink(rel, e)
            self._finish_dirs()
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

    def _is_current(self, f: _File, state: _State) -> bool:
        if state.done.get(f.rel) != f.key:
            return False
        try:
            st = os.lstat(self.path(f.rel))
        except OSError:
            return False
        return (
            stat_mod.S_ISREG(st.st_mode)
            and st.st_size == f.entry.size
            and st.st_mtime_ns == _mtime_ns(f.entry)
        )

    def _write_file(self, f: _File, keep: bool) -> None:
        final = self.path(f.rel)
        tmp = _tmp_name(final)
        source = self.repo.source
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {tmp}: {exc.strerror or exc}") from exc
        try:
            try:
                for p in f.pieces:
                    with source.open_object(
                        p.hash, p.kind, size=p.size, compressed=f.entry.compressed, keep=keep
                    ) as obj:
                        if _copy_into(obj, fd, p.size) != p.size:
                            raise IntegrityError(
                                f"{f.entry.path}: object {p.hash.hex} is shorter than {p.size} bytes",
                                f.entry.path,
                            )
                os.fchmod(fd, f.entry.mode & 0o777)
                ns = _mtime_ns(f.entry)
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)
            _replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _link_groups(self) -> int:
        count = 0
        for group in self.groups.values():
            primary = self.path(group[0].rel)
            pst = os.lstat(primary)
            for f in group[1:]:
                final = self.path(f.rel)
                with suppress(OSError):
                    st = os.lstat(final)
                    if (st.st_ino, st.st_dev) == (pst.st_ino, pst.st_dev):
                        continue
                tmp = _tmp_name(final)
                try:
                    os.link(primary, tmp)
                    _replace(tmp, final)
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise StorageError(
                        f"cannot hard-link {final} to {primary}: {exc.strerror or exc}"
                    ) from exc
                count += 1
        return count

    def _write_symlink(self, rel: str, e: Dirent) -> None:
        final = self.path(rel)
        with suppress(OSError):
            if os.readlink(final) == e.symlink:
                return
        tmp = _tmp_name(final)
        try:
            os.symlink(e.symlink, tmp)
            ns = _mtime_ns(e)
            with suppress(NotImplementedError, OSError):
                os.utime(tmp, ns=(ns, ns), follow_symlinks=False)
            _replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot create the symbolic link {final}: {exc.strerror or exc}") from exc

    def _finish_dirs(self) -> None:
        for rel, e in reversed(self.dirs):
            path = self.path(rel)
            ns = _mtime_ns(e)
            try:
                os.chmod(path, (e.mode & 0o1777) | stat_mod.S_IRWXU, follow_symlinks=False)
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            except OSError as exc:
                raise StorageError(f"cannot set the mode of {path}: {exc.strerror or exc}") from exc
