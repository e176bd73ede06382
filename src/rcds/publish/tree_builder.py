"""Filling a fresh nested catalog from a stream of members."""

from __future__ import annotations

import stat

from rcds.errors import InputError
from rcds.format.dirent import FLAG_DIR, FLAG_FILE, FLAG_LINK, Dirent, file_flags, link_count_field
from rcds.format.hashes import Algorithm
from rcds.format.pathhash import parent_path
from rcds.publish.catalog_rw import WritableCatalog
from rcds.publish.members import Kind, Member
from rcds.publish.objects import ContentWriter, FileContent

DIR_SIZE = 4096
CATALOG_MARKER = ".cvmfscatalog"
FLUSH_ROWS = 512


class TreeBuilder:
    """Adds members below ``catalog.mountpoint``, enforcing the tree-level input policy.

    Refused: duplicate members, a file and a directory under one name, members below a
    symlink or a file, hard links to missing members or to directories.
    """

    def __init__(
        self, catalog: WritableCatalog, writer: ContentWriter, algorithm: Algorithm, now: int
    ) -> None:
        self.catalog = catalog
        self.writer = writer
        self.algorithm = algorithm
        self.now = now
        self.mount = catalog.mountpoint
        self._dirs: set[str] = {self.mount}
        self._pending: set[str] = set()
        self._group_of: dict[str, int] = {}
        self._groups: dict[int, list[str]] = {}
        self._rows: list[Dirent] = []

    def _insert(self, row: Dirent) -> None:
        """Queue a row; rows go into the catalog in batches (see :meth:`_flush`)."""
        self._rows.append(row)
        if len(self._rows) >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Insert the queued rows; a row whose path exists already is a duplicate member.

        Called before every catalog lookup, so lookups see every row added so far.
        """
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        dup = self.catalog.insert_many(rows)
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
            self._dirs.add(d)

    def add(self, m: Member) -> None:
        """Add one member."""
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
            mode, size, flags, target = stat.S_IFDIR | m.mode, DIR_SIZE, FLAG_DIR, ""
        elif m.kind is Kind.SYMLINK:
            mode, size, flags, target = (
                stat.S_IFLNK | 0o777,
                len(m.target.encode()),
                FLAG_FILE | FLAG_LINK,
                m.target,
            )
        elif m.kind is Kind.FILE:
            mode, size, flags, target = stat.S_IFREG | m.mode, m.size, 0, ""
        else:
            self._hardlink(m, full, name)
            return
        row = Dirent(
            full, name, mode, size, m.mtime, flags, symlink=target, uid=m.uid, gid=m.gid, mtimens=m.mtimens
        )
        if m.kind is Kind.FILE:
            assert m.read is not None
            self._pending.add(full)
            self.writer.add_stream(m.read, m.size, lambda c: self._file_done(row, c), m.display)
        else:
            self._insert(row)
            if m.kind is Kind.DIR:
                self._dirs.add(full)

    def _file_done(self, row: Dirent, content: FileContent) -> None:
        row.flags = file_flags(self.algorithm, chunked=bool(content.chunks))
        row.hash = content.hash
        self._insert(row)
        if content.chunks:
            self._flush()  # chunk rows refer to their file's row
            self.catalog.insert_chunks(row.path, content.chunks)
        self._pending.discard(row.path)

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

    def finish(self) -> Dirent:
        """Complete pending files, link groups, the catalog marker and directory link counts."""
        self.writer.drain(wait=True)
        self._flush()
        for group, paths in self._groups.items():
            for p in paths:
                self.catalog.set_link_count(p, link_count_field(len(paths), group))
        marker = f"{self.mount}/{CATALOG_MARKER}"
        if self.catalog.lookup(marker) is None:
            row = Dirent(marker, CATALOG_MARKER, stat.S_IFREG | 0o644, 0, self.now, 0)
            self.writer.add_bytes(b"", lambda c: self._file_done(row, c))
            self.writer.drain(wait=True)
            self._flush()
        self.catalog.fix_directory_links()
        root = self.catalog.lookup(self.mount)
        assert root is not None
        return root
