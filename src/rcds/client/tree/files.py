"""Seekable, read-only file objects over repository files, loading chunks on demand.

A :class:`RepoFile` knows the list of objects that make up the file (one object, or the chunks
of a chunked file) from the catalog it was opened in. A read loads only the object covering the
current position (through the caches, verified), so reading a little of a large chunked file
downloads a little. Because the object list is fixed at open time, an open file keeps reading
the revision it was opened in, whatever revision the repository switches to meanwhile.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Sequence
from typing import BinaryIO, NamedTuple

from rcds.errors import IntegrityError, NotFoundError
from rcds.format.dirent import FLAG_CHUNKED, FLAG_EXTERNAL, Chunk, Dirent
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.repo.catalog import Catalog

OpenObject = Callable[[ContentHash, ObjectKind, int, bool], BinaryIO]
"""Opens an object's verified plain content: (hash, kind, plain size, compressed)."""

ReadObject = Callable[[ContentHash, ObjectKind, int, bool], bytes]
"""Returns an object's whole verified plain content: (hash, kind, plain size, compressed)."""


class Piece(NamedTuple):
    """One object of a file: where its plain bytes go in the file."""

    offset: int
    size: int
    hash: ContentHash
    kind: ObjectKind

    @property
    def end(self) -> int:
        """The file offset just after this piece."""
        return self.offset + self.size


_NEW = tuple.__new__
# Piece is a NamedTuple; a plan makes one per file, so the common one-object case builds the
# tuple directly (no call of its Python-level __new__).
_FILE = ObjectKind.FILE
_S_IFMT = 0o170000
_S_IFREG = 0o100000


def pieces_of(entry: Dirent, catalog: Catalog) -> list[Piece]:
    """The objects of a regular file, checked to cover it exactly (no gap, no overlap)."""
    flags = entry.flags
    if (entry.mode & _S_IFMT) != _S_IFREG:
        raise NotFoundError(f"{entry.path or '/'} is not a regular file")
    if flags & FLAG_EXTERNAL:
        raise NotFoundError(
            f"{entry.path} is an external file (its content is not stored in the repository); "
            "rcds does not fetch external files"
        )
    if not flags & FLAG_CHUNKED:
        h = entry.hash
        size = entry.size
        if h is None:
            if size == 0:
                return []
            raise IntegrityError(f"{entry.path}: a non-empty file without content hash", entry.path)
        if size < 0:
            raise IntegrityError(f"{entry.path}: negative size {size}", entry.path)
        return [_NEW(Piece, (0, size, h, _FILE))]
    chunks: Sequence[Chunk] = catalog.chunks(entry)
    out = [Piece(c.offset, c.size, c.hash, ObjectKind.PARTIAL) for c in chunks]
    offset = 0
    for p in out:
        if p.offset != offset or p.size < 0:
            raise IntegrityError(
                f"{entry.path}: chunk at offset {p.offset}, expected {offset} (gap or overlap)", entry.path
            )
        offset = p.end
    if offset != entry.size and out:
        raise IntegrityError(
            f"{entry.path}: chunks cover {offset} bytes, the file has {entry.size}", entry.path
        )
    return out


class RepoFile(io.RawIOBase):
    """A read-only, seekable binary file of a repository (``io.RawIOBase``).

    Wrap it in :class:`io.BufferedReader` for small reads; :meth:`read` with no argument reads
    the rest of the file. ``on_close`` is called once when the file is closed. ``read_object``,
    if given, reads a whole object at once (used when the whole of a one-object file is read).
    """

    def __init__(
        self,
        name: str,
        size: int,
        pieces: Sequence[Piece],
        open_object: OpenObject,
        *,
        compressed: bool = True,
        on_close: Callable[[], None] | None = None,
        read_object: ReadObject | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.size = size
        self._pieces = list(pieces)
        self._starts = [p.offset for p in self._pieces]
        self._open_object = open_object
        self._compressed = compressed
        self._on_close = on_close
        self._read_object = read_object
        self._pos = 0
        self._current: int | None = None
        self._file: BinaryIO | None = None

    @property
    def pieces(self) -> Sequence[Piece]:
        """The objects of the file, in file order."""
        return self._pieces

    @property
    def compressed(self) -> bool:
        """Whether the file's objects are stored compressed."""
        return self._compressed

    @property
    def mode(self) -> str:
        """Always ``rb``."""
        return "rb"

    def readable(self) -> bool:
        """True."""
        return True

    def seekable(self) -> bool:
        """True."""
        return True

    def tell(self) -> int:
        """The current position."""
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (beyond the end is allowed; reads there return nothing)."""
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _piece_file(self, index: int) -> BinaryIO:
        if self._current != index or self._file is None:
            if self._file is not None:
                self._file.close()
                self._file = None
            p = self._pieces[index]
            self._file = self._open_object(p.hash, p.kind, p.size, self._compressed)
            self._current = index
        return self._file

    def piece_at(self, offset: int) -> tuple[Piece, bool] | None:
        """The object covering ``offset`` and whether it is open already (None past the end)."""
        if offset >= self.size or not self._pieces:
            return None
        index = bisect.bisect_right(self._starts, offset) - 1
        return self._pieces[index], self._current == index and self._file is not None

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read into ``buffer`` from the object covering the current position."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not len(view):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        piece = self._pieces[index]
        f = self._piece_file(index)
        f.seek(self._pos - piece.offset)
        n = f.readinto(view[: min(len(view), piece.end - self._pos)])  # type: ignore[attr-defined]
        if not n:
            raise IntegrityError(
                f"{self.name}: object {piece.hash.object_name(piece.kind)} is shorter than its "
                f"catalog size {piece.size}",
                self.name,
            )
        self._pos += int(n)
        return int(n)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative); short only at the end of the file."""
        if size is None or size < 0:
            return self.readall()
        return self._read_up_to(min(size, max(0, self.size - self.tell())))

    def readall(self) -> bytes:
        """The rest of the file."""
        if self._pos >= self.size:  # at the end, or an empty file: nothing to fetch
            self._checkClosed()
            return b""
        if self._pos == 0 and len(self._pieces) == 1:  # the common case: one object, read whole
            self._checkClosed()
            p = self._pieces[0]
            if self._read_object is not None and self._file is None:
                data = self._read_object(p.hash, p.kind, p.size, self._compressed)
            else:
                data = self._piece_file(0).read()
            if len(data) != self.size:
                raise IntegrityError(
                    f"{self.name}: object {self._pieces[0].hash.hex} has {len(data)} bytes, "
                    f"the catalog says {self.size}",
                    self.name,
                )
            self._pos = self.size
            return data
        return self._read_up_to(max(0, self.size - self.tell()))

    def _read_up_to(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position (fewer only at the end of the file)."""
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < len(out):
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        del out[got:]
        return bytes(out)

    def close(self) -> None:
        """Close the current object file and release the revision."""
        if self.closed:
            return
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            super().close()
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback()

    def __repr__(self) -> str:
        return f"<RepoFile {self.name!r} size={self.size}>"
