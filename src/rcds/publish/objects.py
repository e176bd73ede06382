"""File content into objects: chunk, compress, hash and store, on a small thread pool.

zlib and hashlib release the GIL on large buffers, so compression of different files and
chunks runs on both cores while the main thread keeps parsing the input. Completion
callbacks run on the caller's thread, in submission order. Bytes in flight are bounded, so
memory stays flat whatever the input size.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import dataclass, field

from rcds.errors import InputError
from rcds.format.chunker import ChunkParams, StreamChunker, should_chunk
from rcds.format.compression import make_object
from rcds.format.dirent import Chunk
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.storage.local import LocalStore

READ_BLOCK = 1 << 20


@dataclass(slots=True)
class FileContent:
    """Where a file's content went: one object (``hash``) or a list of chunks."""

    size: int
    hash: ContentHash | None = None
    chunks: list[Chunk] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    parts: list[tuple[int, int, cf.Future[ContentHash]]]
    size: int
    chunked: bool
    done: Callable[[FileContent], None]


@dataclass(slots=True)
class WriteStats:
    """What a writer did."""

    files: int = 0
    bytes_in: int = 0
    objects_written: int = 0
    bytes_written: int = 0


class ContentWriter:
    """Turns file contents into stored objects."""

    def __init__(
        self,
        store: LocalStore,
        algorithm: Algorithm = Algorithm.SHA1,
        *,
        level: int = 6,
        chunking: ChunkParams | None = None,
        workers: int = 2,
        max_in_flight: int = 64 << 20,
    ) -> None:
        self.store = store
        self.algorithm = algorithm
        self.level = level
        self.chunking = chunking
        self.max_in_flight = max_in_flight
        self.stats = WriteStats()
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rcds-compress")
        self._files: collections.deque[_Pending] = collections.deque()
        self._flight: collections.deque[tuple[int, cf.Future[ContentHash]]] = collections.deque()
        self._in_flight = 0

    def _store(self, data: bytes, kind: ObjectKind) -> ContentHash:
        obj = make_object(data, self.algorithm, self.level)
        if self.store.put_if_absent(obj.hash.object_name(kind), obj.data):
            self.stats.objects_written += 1
            self.stats.bytes_written += len(obj.data)
        return obj.hash

    def _submit(self, data: bytes, kind: ObjectKind) -> cf.Future[ContentHash]:
        while self._flight and self._flight[0][1].done():
            self._in_flight -= self._flight.popleft()[0]
        while self._flight and self._in_flight + len(data) > self.max_in_flight:
            n, fut = self._flight.popleft()
            fut.result()
            self._in_flight -= n
        fut = self._pool.submit(self._store, data, kind)
        self._flight.append((len(data), fut))
        self._in_flight += len(data)
        return fut

    def add_bytes(self, data: bytes, done: Callable[[FileContent], None]) -> None:
        """Store a small content held in memory; ``done`` runs later from :meth:`drain`."""
        fut = self._submit(data, ObjectKind.FILE)
        self._files.append(_Pending([(0, len(data), fut)], len(data), False, done))
        self.stats.files += 1
        self.stats.bytes_in += len(data)
        self.drain()

    def add_stream(
        self, read: Callable[[int], bytes], size: int, done: Callable[[FileContent], None], name: str
    ) -> None:
        """Read a file's ``size`` bytes through ``read`` and store them (chunked when large)."""
        if self.chunking is None or not should_chunk(size, self.chunking):
            data = _read_exact(read, size, name)
            self.add_bytes(data, done)
            return
        chunker = StreamChunker(self.chunking)
        parts: list[tuple[int, int, cf.Future[ContentHash]]] = []
        offset = 0
        pending_piece: bytes | None = None
        remaining = size

        def emit(pieces: list[bytes]) -> None:
            nonlocal offset, pending_piece
            for piece in pieces:
                if pending_piece is not None:
                    parts.append(
                        (offset, len(pending_piece), self._submit(pending_piece, ObjectKind.PARTIAL))
                    )
                    offset += len(pending_piece)
                pending_piece = piece

        while remaining > 0:
            block = read(min(READ_BLOCK, remaining))
            if not block:
                raise InputError(f"member {name!r} is truncated: the input ends inside its data", name)
            remaining -= len(block)
            emit(chunker.feed(block))
        emit(chunker.finish())
        assert pending_piece is not None
        if not parts:  # the chunker found no cut: store as an ordinary file
            parts.append((0, len(pending_piece), self._submit(pending_piece, ObjectKind.FILE)))
            chunked = False
        else:
            parts.append((offset, len(pending_piece), self._submit(pending_piece, ObjectKind.PARTIAL)))
            chunked = True
        self._files.append(_Pending(parts, size, chunked, done))
        self.stats.files += 1
        self.stats.bytes_in += size
        self.drain()

    def drain(self, wait: bool = False) -> None:
        """Run completion callbacks of finished files, in order; with ``wait``, of all files."""
        while self._files:
            head = self._files[0]
            if not wait and not all(f.done() for _, _, f in head.parts):
                return
            self._files.popleft()
            hashes = [(o, n, f.result()) for o, n, f in head.parts]
            if head.chunked:
                head.done(FileContent(head.size, None, [Chunk(o, n, h) for o, n, h in hashes]))
            else:
                head.done(FileContent(head.size, hashes[0][2]))

    def close(self, wait: bool = True) -> None:
        """Finish (or abandon) outstanding work and stop the threads."""
        try:
            if wait:
                self.drain(wait=True)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=not wait)
            self._files.clear()
            self._flight.clear()
            self._in_flight = 0


def _read_exact(read: Callable[[int], bytes], size: int, name: str) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        block = read(min(READ_BLOCK, size - len(buf)))
        if not block:
            raise InputError(f"member {name!r} is truncated: the input ends inside its data", name)
        buf += block
    return bytes(buf)
