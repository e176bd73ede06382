"""File content into objects: chunk, compress, hash and store, on threads or worker processes.

Small contents (up to ``BATCH_MAX_FILE``) of a big enough input go in batches to the worker
processes of :mod:`rcds.publish.workers`, which compress, hash and store them outside this
process's GIL. Larger contents and chunks, and everything of small inputs (no process start-up
for a few files), go to a small thread pool: zlib and hashlib release the GIL on large buffers,
so they run on both cores while the main thread keeps parsing the input. Completion callbacks
run on the caller's thread, in submission order, whichever way a content went. Bytes in flight
are bounded, so memory stays flat whatever the input size.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rcds.errors import InputError
from rcds.format.chunker import ChunkParams, StreamChunker, should_chunk
from rcds.format.compression import make_object
from rcds.format.deflaters import Compression
from rcds.format.dirent import Chunk
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.publish import workers as procs
from rcds.publish.members import FileRange, SourceFile
from rcds.publish.objworker import Batch
from rcds.publish.workers import WorkerPool
from rcds.storage.base import Store
from rcds.storage.local import LocalStore

READ_BLOCK = 1 << 20
BATCH_MAX_FILE = 256 << 10
"""Contents up to this size go to worker processes in batches; larger ones to threads."""
POOL_MIN_FILES = 500
POOL_MIN_BYTES = 8 << 20
"""Worker processes are started once an input has this many small files or bytes of them (a
small publication does not pay their start-up); a pool already running is used at once."""
ZLIB_6 = Compression("zlib", 6)
BATCH_BYTES = 256 << 10
BATCH_FILES = 256
RANGE_BATCH_FILES = 1024
"""Byte ranges per batch (up to the pool's ``max_range_batch`` bytes): their requests are small,
so batches are larger than those of contents, with fewer messages and answers per object."""


class _Result(Protocol):
    def done(self) -> bool: ...

    def result(self) -> ContentHash: ...


class _Slot:
    """One content of a batch, with the interface of a future."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def done(self) -> bool:
        return self.batch.hashes is not None

    def result(self) -> ContentHash:
        assert self.batch.hashes is not None
        return self.batch.hashes[self.index]


@dataclass(slots=True)
class FileContent:
    """Where a file's content went: one object (``hash``) or a list of chunks."""

    size: int
    hash: ContentHash | None = None
    chunks: list[Chunk] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    parts: list[tuple[int, int, _Result]]
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
        store: Store,
        algorithm: Algorithm = Algorithm.SHA1,
        *,
        compression: Compression = ZLIB_6,
        chunking: ChunkParams | None = None,
        workers: int | None = None,
        max_in_flight: int = 64 << 20,
        processes: bool | None = None,
    ) -> None:
        """``compression``: the library and level of every object (its library must import:
        see :func:`rcds.format.deflaters.resolve`). ``processes``: True to use worker processes
        at once, False never, None (default) once the input proves big enough (see
        ``POOL_MIN_FILES``); without them, threads do it all. Worker processes write only into a
        :class:`LocalStore` (they open it by path); for other stores (S3) ``workers`` threads
        (default: the store's ``parallelism``) compress and upload."""
        self.store = store
        if not isinstance(store, LocalStore):
            processes = False
        self._root = str(store.root) if isinstance(store, LocalStore) else ""
        self.algorithm = algorithm
        self.compression = compression
        self._compress = compression.compressor()
        self.chunking = chunking
        self.max_in_flight = max_in_flight
        self.stats = WriteStats()
        self._threads = cf.ThreadPoolExecutor(
            max_workers=workers or store.parallelism, thread_name_prefix="rcds-compress"
        )
        self._files: collections.deque[_Pending] = collections.deque()
        self._flight: collections.deque[tuple[int, cf.Future[ContentHash]]] = collections.deque()
        self._in_flight = 0
        self._use_pool = processes
        self._pool: WorkerPool | None = None
        self._batch: Batch | None = None
        self._batch_limit = BATCH_BYTES
        self._range_limit = BATCH_BYTES
        self._small_files = 0
        self._small_bytes = 0
        self._sent: collections.deque[Batch] = collections.deque()

    def _want_pool(self, n: int) -> WorkerPool | None:
        """The worker pool if a content of ``n`` bytes should go to it (leased on first need)."""
        if n > BATCH_MAX_FILE or self._use_pool is False:
            return None
        if self._pool is not None:
            return self._pool
        self._small_files += 1
        self._small_bytes += n
        small = self._small_files < POOL_MIN_FILES and self._small_bytes < POOL_MIN_BYTES
        if self._use_pool is None and small and not procs.running():
            return None
        self._pool = procs.lease()
        if self._pool is None:
            self._use_pool = False  # busy with another ingest, disabled, or cannot start: threads
            return None
        self._batch_limit = min(BATCH_BYTES, self._pool.max_batch)
        self._range_limit = self._pool.max_range_batch
        return self._pool

    def _flush_batch(self) -> None:
        if self._batch is not None and self._pool is not None:
            batch, self._batch = self._batch, None
            self._pool.submit(batch)
            self._sent.append(batch)

    def _open_batch(self, source: SourceFile | None) -> Batch:
        batch = self._batch
        if batch is not None and batch.source is not source:
            self._flush_batch()
            batch = None
        if batch is None:
            batch = self._batch = Batch(self._root, self.algorithm, str(self.compression), source=source)
        return batch

    def _close_if_full(self, pool: WorkerPool, batch: Batch) -> None:
        if batch.source is None:
            full = batch.nbytes >= self._batch_limit or batch.count >= BATCH_FILES
        else:
            full = batch.nbytes >= self._range_limit or batch.count >= RANGE_BATCH_FILES
        if full:
            self._flush_batch()
            pool.collect()

    def _add_to_batch(self, pool: WorkerPool, data: bytes) -> _Slot:
        batch = self._open_batch(None)
        slot = _Slot(batch, batch.add(data))
        self._close_if_full(pool, batch)
        return slot

    def _add_range(self, pool: WorkerPool, extent: FileRange) -> _Slot:
        batch = self._open_batch(extent.source)
        slot = _Slot(batch, batch.add_range(extent.offset, extent.size))
        self._close_if_full(pool, batch)
        return slot

    def _store(self, data: bytes, kind: ObjectKind) -> ContentHash:
        obj = make_object(data, self.algorithm, self._compress)
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
        fut = self._threads.submit(self._store, data, kind)
        self._flight.append((len(data), fut))
        self._in_flight += len(data)
        return fut

    def add_bytes(self, data: bytes, done: Callable[[FileContent], None]) -> None:
        """Store a small content held in memory; ``done`` runs later from :meth:`drain`."""
        pool = self._want_pool(len(data))
        fut: _Result = self._submit(data, ObjectKind.FILE) if pool is None else self._add_to_batch(pool, data)
        self._files.append(_Pending([(0, len(data), fut)], len(data), False, done))
        self.stats.files += 1
        self.stats.bytes_in += len(data)
        self.drain()

    def add_stream(
        self, read: Callable[[int], bytes], size: int, done: Callable[[FileContent], None], name: str
    ) -> None:
        """Read a file's ``size`` bytes through ``read`` and store them (chunked when large).

        A :class:`~rcds.publish.members.FileRange` of a small file goes to a worker process as a
        byte range (the worker reads it); anything else is read here. A file the chunker would
        cut is never a range: it is chunked as when streamed."""
        chunked = self.chunking is not None and should_chunk(size, self.chunking)
        if type(read) is FileRange and read.size == size and not chunked:
            pool = self._want_pool(size)
            if pool is not None:
                slot = self._add_range(pool, read)
                self._files.append(_Pending([(0, size, slot)], size, False, done))
                self.stats.files += 1
                self.stats.bytes_in += size
                self.drain()
                return
        if not chunked:
            data = _read_exact(read, size, name)
            self.add_bytes(data, done)
            return
        chunker = StreamChunker(self.chunking)
        parts: list[tuple[int, int, _Result]] = []
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

    def flush(self) -> None:
        """Send the batch being filled to the workers now (its results are waited for later)."""
        self._flush_batch()

    def drain(self, wait: bool = False) -> None:
        """Run completion callbacks of finished files, in order; with ``wait``, of all files."""
        if wait:
            self._flush_batch()
        while self._files:
            head = self._files[0]
            parts = head.parts
            if not (parts[0][2].done() if len(parts) == 1 else all(f.done() for _, _, f in parts)):
                if not wait:
                    return
                for _, _, f in head.parts:
                    if isinstance(f, _Slot) and self._pool is not None:
                        self._pool.finish(f.batch)
            self._files.popleft()
            hashes = [(o, n, f.result()) for o, n, f in head.parts]
            if self._sent:
                self._account()
            if head.chunked:
                head.done(FileContent(head.size, None, [Chunk(o, n, h) for o, n, h in hashes]))
            else:
                head.done(FileContent(head.size, hashes[0][2]))

    def close(self, wait: bool = True) -> None:
        """Finish (or abandon) outstanding work, stop the threads and give back the worker pool."""
        try:
            if wait:
                self.drain(wait=True)
        finally:
            self._threads.shutdown(wait=True, cancel_futures=not wait)
            self._files.clear()
            self._flight.clear()
            self._in_flight = 0
            self._batch = None
            pool, self._pool = self._pool, None
            if pool is not None:
                self._account()
                self._sent.clear()
                procs.release(pool)

    def _account(self) -> None:
        """Count the objects that finished batches wrote."""
        while self._sent and self._sent[0].hashes is not None:
            batch = self._sent.popleft()
            self.stats.objects_written += batch.written
            self.stats.bytes_written += batch.bytes_written


def _read_exact(read: Callable[[int], bytes], size: int, name: str) -> bytes:
    first = read(min(READ_BLOCK, size)) if size else b""
    if len(first) == size:
        return first  # the common case: no copy
    if not first:
        raise InputError(f"member {name!r} is truncated: the input ends inside its data", name)
    buf = bytearray(first)
    while len(buf) < size:
        block = read(min(READ_BLOCK, size - len(buf)))
        if not block:
            raise InputError(f"member {name!r} is truncated: the input ends inside its data", name)
        buf += block
    return bytes(buf)
