"""Filling a fresh nested catalog from a stream of members."""

from __future__ import annotations

import stat
from collections.abc import Callable
from functools import partial

from rcds.errors import InputError
from rcds.format.dirent import FLAG_DIR, FLAG_FILE, FLAG_LINK, Dirent, file_flags, link_count_field
from rcds.format.hashes import Algorithm
from rcds.format.pathhash import PathHash, md5_pair, parent_path
from rcds.publish.catalog_rw import INSERT_FILE_ROW, INSERT_ROW, WritableCatalog, row_values
from rcds.publish.members import Kind, Member
from rcds.publish.objects import ContentWriter, FileContent

DIR_SIZE = 4096
CATALOG_MARKER = ".cvmfscatalog"
FLUSH_ROWS = 512


class TreeBuilder:
    """Adds members below ``catalog.mountpoint``, enforcing the tree-level input policy.

    Refused: duplicate members, a file and a directory under one name, members below a
    symlink or a file, hard links to missing members or to directories.

    Regular files (nearly every member of an ingest) take a lean path: their row is a list of
    the values of :data:`~rcds.publish.catalog_rw.INSERT_FILE_ROW`, built once when the member
    arrives (the parent's path hash comes from the directory it is in, hashed once), completed
    with the content hash when the content is stored, and inserted with the next batch.
    """

    def __init__(
        self, catalog: WritableCatalog, writer: ContentWriter, algorithm: Algorithm, now: int
    ) -> None:
        self.catalog = catalog
        self.writer = writer
        self.algorithm = algorithm
        self.now = now
        self.mount = catalog.mountpoint
        self._dirs: dict[str, PathHash] = {self.mount: md5_pair(self.mount)}
        """Every directory of the tree, with its own path hash (its children's parent hash)."""
        self._pending: set[str] = set()
        self._group_of: dict[str, int] = {}
        self._groups: dict[int, list[str]] = {}
        self._rows: list[tuple[object, ...]] = []
        self._row_paths: list[str] = []
        self._files: list[list[object]] = []
        self._file_paths: list[str] = []
        self._file_flags = file_flags(algorithm)
        self._file_done_at = self._file_done  # one bound method for every file's callback

    def _insert(self, row: Dirent) -> None:
        """Queue a row; rows go into the catalog in batches (see :meth:`_flush`)."""
        path = row.path
        parent = path[: path.rfind("/")]
        values = row_values(row, self._dirs.get(parent) or md5_pair(parent))
        if row.is_dir:
            self._dirs[path] = (values[0], values[1])  # type: ignore[assignment]
        self._rows.append(values)
        self._row_paths.append(path)
        if len(self._rows) >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Insert the queued rows; a row whose path exists already is a duplicate member.

        Called before every catalog lookup, so lookups see every row added so far.
        """
        dup = None
        if self._rows:
            rows, paths, self._rows, self._row_paths = self._rows, self._row_paths, [], []
            dup = self.catalog.insert_rows(INSERT_ROW, rows, paths)
        if self._files and dup is None:
            files, paths, self._files, self._file_paths = self._files, self._file_paths, [], []
            dup = self.catalog.insert_rows(INSERT_FILE_ROW, files, paths)
        if dup is not None:
            rel = self._rel(dup)
            raise InputError(f"member {rel!r} appears more than once in the input", rel)

    def _full(self, rel: str) -> str:
        return f"{self.mount}/{rel}" if rel else self.mount

    def _rel(self, full: str) -> str:
        return full[len(self.mount) + 1 :] or "."

    def _ensure_parents(self, full: str, member: Member) -> None:
        missing: list[str] = []
        p = parent_path(full)
        while p not in self._dirs:
            self._flush()
            existing = self.catalog.lookup(p) if p not in self._pending else None
            if p in self._pending or existing is not None:
                what = "a symlink" if existing is not None and existing.is_symlink else "a file"
                raise InputError(
                    f"member {member.display!r} lies below {self._rel(p)!r}, which is {what}", member.display
                )
            missing.append(p)
            p = parent_path(p)
        for d in reversed(missing):
            self._insert(
                Dirent(
                    d,
                    d.rsplit("/", 1)[1],
                    stat.S_IFDIR | 0o755,
                    DIR_SIZE,
                    self.now,
                    FLAG_DIR,
                    uid=member.uid,
                    gid=member.gid,
                )
            )

    def add(self, m: Member) -> None:
        """Add one member."""
        if m.kind is Kind.FILE and m.path:  # the lean path (see the class documentation)
            full = f"{self.mount}/{m.path}"
            cut = full.rfind("/")
            parent = self._dirs.get(full[:cut])
            if parent is None:
                self._ensure_parents(full, m)
                parent = self._dirs[full[:cut]]
            if full in self._dirs:
                raise InputError(f"member {m.display!r} is both a directory and a file", m.display)
            if full in self._pending:  # other duplicates are found when their rows are inserted
                raise InputError(f"member {m.display!r} appears more than once in the input", m.display)
            self._pending.add(full)
            a, b = md5_pair(full)
            row: list[object] = [
                a, b, parent[0], parent[1], None, m.size, stat.S_IFREG | m.mode, m.mtime, m.mtimens, 0,
                full[cut + 1 :], m.uid, m.gid,
            ]  # fmt: skip
            assert m.read is not None
            self.writer.add_stream(m.read, m.size, partial(self._file_done_at, full, row), m.display)
            return
        full = self._full(m.path)
        name = full.rsplit("/", 1)[1]
        if m.path:
            self._ensure_parents(full, m)
        if full in self._dirs:
            if m.kind is not Kind.DIR:
                raise InputError(f"member {m.display!r} is both a directory and a {m.kind.value}", m.display)
            self._flush()
            old = self.catalog.lookup(full)
            assert old is not None
            self.catalog.update(
                old.replace(
                    mode=stat.S_IFDIR | m.mode, mtime=m.mtime, mtimens=m.mtimens, uid=m.uid, gid=m.gid
                )
            )
            return
        if full in self._pending:  # other duplicates are found when their rows are inserted
            raise InputError(f"member {m.display!r} appears more than once in the input", m.display)
        if m.kind is Kind.DIR:
            self._insert(
                Dirent(
                    full,
                    name,
                    stat.S_IFDIR | m.mode,
                    DIR_SIZE,
                    m.mtime,
                    FLAG_DIR,
                    uid=m.uid,
                    gid=m.gid,
                    mtimens=m.mtimens,
                )
            )
        elif m.kind is Kind.SYMLINK:
            self._insert(
                Dirent(
                    full,
                    name,
                    stat.S_IFLNK | 0o777,
                    len(m.target.encode()),
                    m.mtime,
                    FLAG_FILE | FLAG_LINK,
                    symlink=m.target,
                    uid=m.uid,
                    gid=m.gid,
                    mtimens=m.mtimens,
                )
            )
        else:
            self._hardlink(m, full, name)

    def _file_done(self, full: str, row: list[object], content: FileContent) -> None:
        """A file's content is stored: complete its row (an :data:`INSERT_FILE_ROW` row) and queue it."""
        if content.chunks:  # a full row (chunked flags, no hash of its own), then the chunk rows
            _, _, _, _, _, size, mode, mtime, mtimens, _, name, uid, gid = row
            flags = file_flags(self.algorithm, chunked=True)
            d = Dirent(full, name, mode, size, mtime, flags, uid=uid, gid=gid, mtimens=mtimens)  # type: ignore[arg-type]
            self._insert(d)
            self._flush()  # chunk rows refer to their file's row
            self.catalog.insert_chunks(full, content.chunks)
        else:
            assert content.hash is not None
            row[4] = content.hash.digest
            row[9] = self._file_flags
            self._files.append(row)
            self._file_paths.append(full)
            if len(self._files) >= FLUSH_ROWS:
                self._flush()
        self._pending.discard(full)

    def _hardlink(self, m: Member, full: str, name: str) -> None:
        self.writer.drain(wait=True)
        self._flush()
        target_full = self._full(m.target)
        target = self.catalog.lookup(target_full)
        if target is None:
            raise InputError(
                f"member {m.display!r} is a hard link to {m.target!r}, which is not an earlier member",
                m.display,
            )
        if target.is_dir:
            raise InputError(f"member {m.display!r} is a hard link to a directory ({m.target!r})", m.display)
        copy = target.replace(path=full, name=name)
        if target.is_regular and parent_path(target_full) == parent_path(full):
            group = self._group_of.get(target_full)
            if group is None:
                group = len(self._groups) + 1
                self._group_of[target_full] = group
                self._groups[group] = [target_full]
            self._group_of[full] = group
            self._groups[group].append(full)
        # hard links across directories become independent copies (as stock does); content is stored once
        copy.hardlinks = 1
        self._insert(copy)
        if target.is_chunked:
            self._flush()
            self.catalog.insert_chunks(full, self.catalog.chunks(target))

    def finish(self, while_waiting: Callable[[], object] | None = None) -> Dirent:
        """Complete pending files, link groups, the catalog marker and directory link counts.

        ``while_waiting`` runs once the last contents are on their way to be stored and before
        waiting for them: serial work of the caller's that then costs no wall time."""
        if while_waiting is not None:
            self.writer.flush()
            while_waiting()
        self.writer.drain(wait=True)
        self._flush()
        for group, paths in self._groups.items():
            for p in paths:
                self.catalog.set_link_count(p, link_count_field(len(paths), group))
        marker = f"{self.mount}/{CATALOG_MARKER}"
        if self.catalog.lookup(marker) is None:
            row: list[object] = [
                *md5_pair(marker), *self._dirs[self.mount], None, 0, stat.S_IFREG | 0o644, self.now, None,
                0, CATALOG_MARKER, 0, 0,
            ]  # fmt: skip
            self.writer.add_bytes(b"", partial(self._file_done, marker, row))
            self.writer.drain(wait=True)
            self._flush()
        self.catalog.fix_directory_links()
        root = self.catalog.lookup(self.mount)
        assert root is not None
        return root
