"""Batches of small contents, and the worker process side of :mod:`rcds.publish.workers`.

A worker is a fresh interpreter running :func:`serve` on two inherited pipe ends. It says
``ready``, then answers each request (a header: store root, hash algorithm, compression
``LIBRARY:LEVEL``, object kind, content sizes, and either None, followed by one buffer holding
the contents, or the source file's ``(path, identity, offsets)``, whose byte ranges the worker
reads itself) with ``("ok", digests, objects written, bytes written)`` or ``("error", error
class name, message)``.
It exits when the request pipe reaches end of file: when the parent closes it, or dies.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from rcds.errors import InputError, RcdsError
from rcds.format.compression import make_object
from rcds.format.deflaters import Compress, Compression
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.publish.members import SourceFile, file_identity
from rcds.storage.local import LocalStore

SPAN_SLACK = 1 << 20
"""A range batch is read with one ``pread`` of its whole span (the ranges and the tar headers
between them) unless the span exceeds its contents by more than this (a large member between)."""
Source = tuple[str, tuple[int, int, int, int], list[int]]
"""What a range request names: the file's path, its identity (device, inode, size, modification
time: :func:`~rcds.publish.members.file_identity`) and each content's offset."""


@dataclass(slots=True, eq=False)
class Batch:
    """Small contents for one worker; ``hashes`` is set once the worker has stored them."""

    root: str
    algorithm: Algorithm
    compression: str
    """``LIBRARY:LEVEL`` (already resolved by the parent: its library imports)."""
    kind: ObjectKind = ObjectKind.FILE
    source: SourceFile | None = None
    """Set: the contents are byte ranges of this file (``offsets``), read by the worker."""
    items: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    nbytes: int = 0
    hashes: list[ContentHash] | None = None
    written: int = 0
    bytes_written: int = 0

    def add(self, data: bytes) -> int:
        """Append a content; return its index in the batch."""
        self.items.append(data)
        self.sizes.append(len(data))
        self.nbytes += len(data)
        return len(self.items) - 1

    def add_range(self, offset: int, size: int) -> int:
        """Append a content that is ``size`` bytes at ``offset`` of ``source``; return its index."""
        self.offsets.append(offset)
        self.sizes.append(size)
        self.nbytes += size
        return len(self.sizes) - 1

    @property
    def count(self) -> int:
        """Contents in the batch."""
        return len(self.sizes)

    @property
    def cost(self) -> int:
        """Bytes the request takes in a pipe: contents (none for ranges), framing, the pickled
        sizes and offsets."""
        framing = 64 + 8 * len(self.sizes)
        return framing + (8 * len(self.offsets) if self.source is not None else self.nbytes)

    def message(self) -> tuple[tuple[str, str, str, str, list[int], Source | None], bytes | None]:
        """The request header and the one buffer holding every content (None for ranges)."""
        src = self.source
        where = None if src is None else (src.path, src.identity, self.offsets)
        head = (self.root, self.algorithm.value, self.compression, self.kind.value, self.sizes, where)
        return head, None if src is not None else b"".join(self.items)


def read_ranges(source: Source, sizes: list[int]) -> list[memoryview]:
    """The contents at ``source``'s offsets, read from the file (opened here, checked before and
    after the reads to be the file the parent parsed, unchanged); InputError if the file is gone,
    replaced, written to or shorter."""
    path, identity, offsets = source
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot open the archive {path} in a worker process: {exc.strerror}") from None
    try:
        _check(fd, identity, path)
        views = _pread_all(fd, offsets, sizes, path)
        _check(fd, identity, path)
        return views
    finally:
        os.close(fd)


def _check(fd: int, identity: tuple[int, int, int, int], path: str) -> None:
    if file_identity(os.fstat(fd)) != tuple(identity):
        raise InputError(f"the archive {path} was replaced or written to during the ingest; run it again")


def _pread_all(fd: int, offsets: list[int], sizes: list[int], path: str) -> list[memoryview]:
    if not offsets:
        return []
    first, end = offsets[0], offsets[-1] + sizes[-1]
    total = sum(sizes)
    if offsets == sorted(offsets) and end - first <= total + SPAN_SLACK:
        span = memoryview(os.pread(fd, end - first, first))
        if len(span) != end - first:
            raise InputError(_SHORTER.format(path=path, end=end))
        return [span[o - first : o - first + n] for o, n in zip(offsets, sizes, strict=True)]
    views = []
    for o, n in zip(offsets, sizes, strict=True):
        data = os.pread(fd, n, o)
        if len(data) != n:
            raise InputError(_SHORTER.format(path=path, end=o + n))
        views.append(memoryview(data))
    return views


_SHORTER = "the archive {path} ends before byte {end}: it changed during the ingest; run it again"


def store_batch(
    store: LocalStore,
    algorithm: Algorithm,
    compress: Compress,
    kind: ObjectKind,
    sizes: list[int],
    blob: bytes,
) -> tuple[bytes, int, int]:
    """Compress, hash and store each content of ``blob``; return digests, objects and bytes written."""
    return store_contents(store, algorithm, compress, kind, split(blob, sizes))


def split(blob: bytes, sizes: list[int]) -> list[memoryview]:
    """Views of the contents of a buffer that holds them one after another."""
    view = memoryview(blob)
    contents = []
    offset = 0
    for size in sizes:
        contents.append(view[offset : offset + size])
        offset += size
    return contents


def store_contents(
    store: LocalStore,
    algorithm: Algorithm,
    compress: Compress,
    kind: ObjectKind,
    contents: list[memoryview],
) -> tuple[bytes, int, int]:
    """Compress, hash and store each content; return digests, objects and bytes written."""
    digests = bytearray()
    written = nbytes = 0
    if algorithm is Algorithm.SHA1:  # the common case, with no per-object records or name checks
        sha1 = hashlib.sha1
        put = store.put_object
        suffix = kind._value_
        for content in contents:
            data = compress(content)
            digest = sha1(data).digest()
            digests += digest
            h = digest.hex()
            if put(f"data/{h[:2]}/{h[2:]}{suffix}", data):
                written += 1
                nbytes += len(data)
        return bytes(digests), written, nbytes
    for content in contents:
        obj = make_object(content, algorithm, compress)
        digests += obj.hash.digest
        if store.put_if_absent(obj.hash.object_name(kind), obj.data):
            written += 1
            nbytes += len(obj.data)
    return bytes(digests), written, nbytes


def _serve(requests: Connection, replies: Connection) -> None:
    """A worker's loop: one reply per request, until the parent closes the pipe (or dies)."""
    stores: dict[str, LocalStore] = {}
    compressors: dict[str, Compress] = {}
    try:
        replies.send(("ready", os.getpid()))
    except OSError:
        return
    while True:
        try:
            head = requests.recv()
            if head is None:
                return
            root, algo, compression, kind, sizes, source = head
            blob = requests.recv_bytes() if source is None else None
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            store = stores.get(root)
            if store is None:
                store = stores[root] = LocalStore(root)
            compress = compressors.get(compression)
            if compress is None:
                compress = compressors[compression] = Compression.parse(compression).compressor()
            contents = split(blob, sizes) if blob is not None else read_ranges(source, sizes)
            reply: tuple[object, ...] = (
                "ok",
                *store_contents(store, Algorithm(algo), compress, ObjectKind(kind), contents),
            )
        except RcdsError as exc:
            reply = ("error", type(exc).__name__, str(exc))
        except Exception as exc:  # reported to the parent, which raises it
            reply = ("error", "StorageError", f"a worker process failed: {exc!r}")
        try:
            replies.send(reply)
        except OSError:
            return


def serve(request_fd: int, reply_fd: int) -> None:
    """Entry point of a worker process: serve requests on inherited pipe ends."""
    _serve(Connection(request_fd, writable=False), Connection(reply_fd, readable=False))
