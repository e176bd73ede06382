"""Batches of small contents, and the worker process side of :mod:`rcds.publish.workers`.

A worker is a fresh interpreter running :func:`serve` on two inherited pipe ends. It says
``ready``, then answers each request (a header: store root, hash algorithm, compression
``LIBRARY:LEVEL``, object kind, content sizes; then one buffer holding the contents) with
``("ok", digests, objects written, bytes written)`` or ``("error", error class name, message)``.
It exits when the request pipe reaches end of file: when the parent closes it, or dies.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from rcds.errors import RcdsError
from rcds.format.compression import make_object
from rcds.format.deflaters import Compress, Compression
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.storage.local import LocalStore


@dataclass(slots=True, eq=False)
class Batch:
    """Small contents for one worker; ``hashes`` is set once the worker has stored them."""

    root: str
    algorithm: Algorithm
    compression: str
    """``LIBRARY:LEVEL`` (already resolved by the parent: its library imports)."""
    kind: ObjectKind = ObjectKind.FILE
    items: list[bytes] = field(default_factory=list)
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

    @property
    def cost(self) -> int:
        """Bytes the request takes in a pipe: contents, framing, the pickled sizes."""
        return self.nbytes + 64 + 8 * len(self.sizes)

    def message(self) -> tuple[tuple[str, str, str, str, list[int]], bytes]:
        """The request header and the one buffer holding every content."""
        head = (self.root, self.algorithm.value, self.compression, self.kind.value, self.sizes)
        return head, b"".join(self.items)


def store_batch(
    store: LocalStore,
    algorithm: Algorithm,
    compress: Compress,
    kind: ObjectKind,
    sizes: list[int],
    blob: bytes,
) -> tuple[bytes, int, int]:
    """Compress, hash and store each content of ``blob``; return digests, objects and bytes written."""
    view = memoryview(blob)
    digests = bytearray()
    written = nbytes = 0
    offset = 0
    if algorithm is Algorithm.SHA1:  # the common case, with no per-object records or name checks
        sha1 = hashlib.sha1
        put = store.put_object
        suffix = kind._value_
        for size in sizes:
            data = compress(view[offset : offset + size])
            offset += size
            digest = sha1(data).digest()
            digests += digest
            h = digest.hex()
            if put(f"data/{h[:2]}/{h[2:]}{suffix}", data):
                written += 1
                nbytes += len(data)
        return bytes(digests), written, nbytes
    for size in sizes:
        obj = make_object(view[offset : offset + size], algorithm, compress)
        offset += size
        digests += obj.hash.digest
        if store.put_if_absent(obj.hash.object_name(kind), obj.data):
            written += 1
            nbytes += len(obj.data)
    return bytes(digests), written, nbytes


def _serve(requests: Connection, replies: Connection) -> None:
    """A worker's loop: one reply per request, until the parent closes the pipe (or dies)."""
    stores: dict[str, LocalStore] = {}
    try:
        replies.send(("ready", os.getpid()))
    except OSError:
        return
    while True:
        try:
            head = requests.recv()
            if head is None:
                return
            blob = requests.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        root, algo, compression, kind, sizes = head
        try:
            store = stores.get(root)
            if store is None:
                store = stores[root] = LocalStore(root)
            reply: tuple[object, ...] = (
                "ok",
                *store_batch(
                    store,
                    Algorithm(algo),
                    Compression.parse(compression).compressor(),
                    ObjectKind(kind),
                    sizes,
                    blob,
                ),
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
