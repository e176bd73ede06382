"""A FUSE session: the INIT handshake, threads reading requests from ``/dev/fuse``, dispatch to
the file system's handlers, and replies.

A few reader threads block in ``os.readv`` on the device (the read releases the GIL, and the
kernel hands each request to exactly one reader). A handler answers at once (cheap work: a
cached lookup, a read of an object in the local cache), or returns :class:`Later` to have its
work done on a bounded pool of worker threads (catalog queries, downloads) while the reader
goes back to the device; replies go out in any order, matched by the request's ``unique`` id.
Every request is counted by opcode (:attr:`Session.counts`, for tests and ``/metrics``).
The session ends when the kernel reports the device gone (``ENODEV``: unmounted).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from rcds.errors import FuseReplyError
from rcds.mount.fuse import protocol as p

log = logging.getLogger("rcds.mount")

Payload = bytes | list[bytes] | None
"""A successful answer: its bytes (or pieces of it), None for an empty one."""
MAX_WRITE = 128 * 1024
"""Largest WRITE the kernel may send (a read-only file system gets none, but the device's read
buffers must be able to hold one)."""
BUFFER_SIZE = MAX_WRITE + 8192
MAX_PAGES = 256
"""Pages per READ request: 1 MiB."""
_OPCODES = max(p.Op) + 1
_OUT_SIZE = p.OUT_HEADER.size
_pack_out = p.OUT_HEADER.pack


class Later:
    """A handler's answer "do ``fn(*args)`` on a worker thread and reply with its result"."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Payload], *args: Any) -> None:
        self.fn = fn
        self.args = args


class Request:
    """One request: the header fields a handler needs and its body (valid only during the
    handler call: the reader's buffer is reused)."""

    __slots__ = ("body", "gid", "nodeid", "opcode", "pid", "uid", "unique")

    def __init__(self, opcode: int, unique: int, nodeid: int, uid: int, gid: int, pid: int, body: memoryview):
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.body = body


Handler = Callable[[Request], "Payload | Later"]


@dataclass(frozen=True)
class Connection:
    """What INIT settled: the kernel's protocol version and capabilities, and those granted."""

    major: int
    minor: int
    kernel_flags: int
    granted: int
    max_readahead: int

    def has(self, flag: int) -> bool:
        """True if ``flag`` was granted (both sides support it)."""
        return bool(self.granted & flag)


class Filesystem(Protocol):
    """What a session serves."""

    def handlers(self) -> Mapping[int, Handler]:
        """Handler per opcode (others: ``ENOSYS``; write requests should answer ``EROFS``)."""
        ...

    def wanted_flags(self, kernel: int) -> int:
        """INIT capabilities asked for, knowing the ``kernel``'s (granted where it has them)."""
        ...

    def initialised(self, conn: Connection) -> None:
        """Called once INIT is answered, before any other request."""
        ...


class Session:
    """Serves ``fs`` on an open ``/dev/fuse`` descriptor (see the module docstring)."""

    def __init__(self, fd: int, fs: Filesystem, pool: Executor, *, readers: int = 4) -> None:
        self.fd = fd
        self.fs = fs
        self.readers = readers
        self.pool = pool
        """Where :class:`Later` work runs (bounded: its size is how many downloads run at once)."""
        self.conn: Connection | None = None
        self.finished = threading.Event()
        self._tallies: list[list[int]] = [[0] * _OPCODES for _ in range(readers + 1)]
        """Requests by opcode, one row per reader thread (and one for INIT): each row is
        written by one thread only, so counting takes no lock."""
        self._handlers: dict[int, Handler] = {}
        self._threads: list[threading.Thread] = []
        self._names = {op.value: op.name for op in p.Op}

    # -- start and end ---------------------------------------------------------------------------

    def start(self) -> Connection:
        """Answer the kernel's INIT (blocking until it comes), then start the reader threads."""
        buf = bytearray(BUFFER_SIZE)
        while True:
            n = self._read(buf)
            if n is None:
                raise FuseReplyError(errno.ENODEV)
            header = p.IN_HEADER.unpack_from(buf)
            if header[1] == p.Op.INIT:
                break
            self._send(header[2], -errno.EIO, [])
        self._tallies[self.readers][p.Op.INIT] += 1
        conn = self._init(header[2], memoryview(buf)[p.IN_HEADER.size : n])
        self._handlers = dict(self.fs.handlers())
        for i in range(self.readers):
            t = threading.Thread(target=self._serve, args=(i,), name=f"rcds-fuse-reader-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return conn

    def _init(self, unique: int, body: memoryview) -> Connection:
        major, minor, readahead, flags = p.INIT_IN.unpack_from(body)
        if major != p.KERNEL_MAJOR:
            self._send(unique, -errno.EPROTO, [])
            raise FuseReplyError(errno.EPROTO)
        flags2 = 0
        if flags & p.InitFlag.INIT_EXT and len(body) >= p.INIT_IN.size + 4:
            flags2 = int.from_bytes(body[p.INIT_IN.size : p.INIT_IN.size + 4], "little")
        kernel = flags | (flags2 << 32)
        granted = kernel & self.fs.wanted_flags(kernel)
        if granted >> 32:
            granted |= p.InitFlag.INIT_EXT  # else the kernel ignores flags2
        out = p.INIT_OUT.pack(
            p.KERNEL_MAJOR,
            min(minor, p.KERNEL_MINOR),
            readahead,
            granted & 0xFFFFFFFF,
            64,  # max_background
            48,  # congestion_threshold
            MAX_WRITE,
            1,  # time_gran: nanoseconds
            MAX_PAGES,
            0,
            granted >> 32,
            1
            if granted & p.InitFlag.PASSTHROUGH
            else 0,  # max_stack_depth: backing files on plain file systems
        )
        self._send(unique, 0, [out])
        self.conn = Connection(major, min(minor, p.KERNEL_MINOR), kernel, granted, readahead)
        self.fs.initialised(self.conn)
        log.debug("FUSE %d.%d, flags %#x granted", major, minor, granted)
        return self.conn

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the kernel ended the session (unmounted); True if it did."""
        return self.finished.wait(timeout)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the reader threads to end (after an unmount)."""
        for t in self._threads:
            t.join(timeout)

    # -- requests --------------------------------------------------------------------------------

    def _read(self, buf: bytearray) -> int | None:
        while True:
            try:
                return os.readv(self.fd, [buf])
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue  # an interrupted request, or a signal
                if exc.errno == errno.ENODEV:
                    return None  # unmounted
                raise

    @property
    def counts(self) -> dict[str, int]:
        """Requests received so far, by opcode name."""
        out: dict[str, int] = {}
        for opcode in range(_OPCODES):
            n = sum(row[opcode] for row in self._tallies)
            if n:
                out[self._names.get(opcode, str(opcode))] = n
        return out

    def _serve(self, row: int) -> None:
        # the loop every request goes through: locals only, one struct call to parse the header,
        # one writev to answer (see _answer)
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        handlers = self._handlers
        tally = self._tallies[row]
        unpack = p.IN_HEADER.unpack_from
        start = p.IN_HEADER.size
        readv = os.readv
        writev = os.writev
        pack_out = _pack_out
        out_size = _OUT_SIZE
        fd = self.fd
        bufs = [buf]
        try:
            while True:
                try:
                    n = readv(fd, bufs)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue  # an interrupted request, or a signal
                    if exc.errno != errno.ENODEV:  # ENODEV: unmounted
                        log.error("reading /dev/fuse failed: %s", exc)
                    break
                _, opcode, unique, nodeid, uid, gid, pid, _, _ = unpack(buf)
                if opcode < _OPCODES:
                    tally[opcode] += 1
                fn = handlers.get(opcode)
                if fn is None:
                    if opcode not in p.NO_REPLY_OPS:
                        self._send(unique, -errno.ENOSYS, [])
                    continue
                req = Request(opcode, unique, nodeid, uid, gid, pid, view[start:n])
                try:
                    answer = fn(req)
                except Exception as exc:
                    self._failed(req, exc)
                    continue
                if answer.__class__ is bytes:  # the usual answer: one header pack, one writev
                    try:
                        writev(fd, [pack_out(out_size + len(answer), 0, unique), answer])
                    except OSError as exc:
                        if exc.errno not in (errno.ENOENT, errno.ENODEV):
                            log.warning("replying to request %d failed: %s", unique, exc)
                else:
                    self._dispatched(req, answer)
        finally:
            self.finished.set()

    def _failed(self, req: Request, exc: Exception) -> None:
        """A handler raised: its error number (``EIO`` for an unexpected error, logged)."""
        if isinstance(exc, FuseReplyError):
            code = exc.errno
        else:
            log.error(
                "unexpected error in a %s request",
                self._names.get(req.opcode, req.opcode),
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            code = errno.EIO
        if req.opcode not in p.NO_REPLY_OPS:
            self._send(req.unique, -code, [])

    def _dispatch(self, fn: Handler, req: Request) -> None:
        """Call ``fn`` for ``req`` and answer (the reader loop does the same, inlined)."""
        try:
            answer = fn(req)
        except Exception as exc:
            self._failed(req, exc)
            return
        self._dispatched(req, answer)

    def _dispatched(self, req: Request, answer: Payload | Later) -> None:
        if answer.__class__ is Later:
            self.pool.submit(self._later, req.unique, answer)
        elif answer.__class__ is bytes:
            self._answer(req.unique, answer)
        elif answer is None and req.opcode not in p.NO_REPLY_OPS:
            self._answer(req.unique, b"")
        elif req.opcode not in p.NO_REPLY_OPS:
            self._reply(req.unique, answer)  # type: ignore[arg-type]

    def _later(self, unique: int, later: Later) -> None:
        try:
            answer = later.fn(*later.args)
        except FuseReplyError as exc:
            self._send(unique, -exc.errno, [])
            return
        except Exception:
            log.exception("unexpected error in a request")
            self._send(unique, -errno.EIO, [])
            return
        self._reply(unique, answer)

    def _answer(self, unique: int, data: bytes) -> None:
        """A successful answer of one piece (the usual one): one header pack, one writev."""
        try:
            os.writev(self.fd, [_pack_out(_OUT_SIZE + len(data), 0, unique), data])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("replying to request %d failed: %s", unique, exc)

    def _reply(self, unique: int, answer: Payload) -> None:
        if answer.__class__ is bytes:
            self._answer(unique, answer)
        elif answer is None:
            self._send(unique, 0, [])
        elif isinstance(answer, list):
            self._send(unique, 0, answer)
        else:
            self._send(unique, 0, [answer])

    def _send(self, unique: int, error: int, parts: Iterable[bytes]) -> None:
        pieces = list(parts)
        length = p.OUT_HEADER.size + sum(len(x) for x in pieces)
        try:
            os.writev(self.fd, [p.out_header(length, error, unique), *pieces])
        except OSError as exc:
            # ENOENT: the request was interrupted; ENODEV: unmounted meanwhile
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("replying to request %d failed: %s", unique, exc)

    def notify(self, code: int, parts: Iterable[bytes]) -> None:
        """Write a notification (see :mod:`rcds.mount.fuse.notify`); raises ``OSError`` (e.g.
        ``ENOENT`` for an inode the kernel does not hold)."""
        pieces = list(parts)
        length = p.OUT_HEADER.size + sum(len(x) for x in pieces)
        os.writev(self.fd, [p.out_header(length, code, 0), *pieces])
