"""One client connection of the repository server: an :class:`asyncio.Protocol`.

Request heads are parsed from whatever arrives; several requests in one read (HTTP/1.1
pipelining) are answered in order. An object ``GET`` in the usual form takes a short path
(:mod:`rcds.serve.objects`: one regular expression, the verdict on its header lines looked up,
one ``openat`` in a cached bucket directory); anything else the general one
(:mod:`rcds.serve.request`, :mod:`rcds.serve.answer`). Small bodies are read with the head
and written in one go (the answers to one read are joined into one write when no access log
is installed). A small body not in the page cache is read by a worker thread together with
those of the pipelined requests after it that are not in the page cache either, in one job
(:mod:`rcds.serve.batch`). A body above :data:`~rcds.serve.body.SMALL_BODY` goes out with
``sendfile`` (:mod:`rcds.serve.body`): at once, in the loop, when the socket takes all of it
(the transport holding nothing), else from a task, with later requests waiting meanwhile and
answered in order afterwards. When the client does
not read (the transport asks to pause writing), no further requests are answered and, beyond
:data:`MAX_INPUT` unanswered bytes, no further input is read. A connection that stays idle,
takes longer than the idle timeout for one request head, or makes no progress reading an
answer for that long is closed by the server's sweep (:meth:`Connection.timed_out`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import Protocol

from rcds.serve.answer import Chunk, Ready, answer_to, object_answer
from rcds.serve.batch import Batch, Unread
from rcds.serve.body import Deferred, no_delay, send_file, send_now
from rcds.serve.handler import AccessLog, AccessRecord
from rcds.serve.objects import ObjectGets
from rcds.serve.request import MAX_HEAD, Request, next_request
from rcds.serve.response import CONTINUE, Heads

MAX_BATCH = 256 * 1024
"""Answers to pipelined requests are written out once this many bytes are pending."""

MAX_INPUT = 2 * MAX_HEAD
"""Reading stops while this many bytes of unanswered requests are buffered."""

LINGER = 2.0
"""Seconds a closing connection keeps reading (and dropping) what the client still sends, until
the client's EOF. Closing a socket with unread input makes the kernel send a reset, which can
discard the last answer before the client reads it: a client refused for an oversized head is
usually still sending it."""

log = logging.getLogger("rcds.serve.http")


class ServerContext(Protocol):
    """What a :class:`Connection` needs from its server."""

    heads: Heads
    objects: ObjectGets
    idle_timeout: float
    access_log: AccessLog | None
    connections: set[Connection]

    def lookup(self, name: str) -> str | None:
        """The resolved directory of repository ``name``, or None if it is not served."""
        ...


class Connection(asyncio.Protocol):
    """Answers the requests of one client connection, in order."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.deadline = 0.0
        self._buf = b""
        self._sending: asyncio.Task[None] | None = None  # a deferred answer is under way
        self._write_paused = self._read_paused = self._eof = self._closing = self._quiet = False
        self._sent = 0  # body bytes of the deferred answer sent so far
        self._sock_fd = -1

    # -- asyncio callbacks ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server, start the idle clock, turn Nagle's algorithm off."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        no_delay(sock)
        self._sock_fd = sock.fileno() if sock is not None else -1
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "-"
        self.deadline = time.monotonic() + self.ctx.idle_timeout
        self.ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; stop a deferred answer still under way."""
        self._closing = True
        self.ctx.connections.discard(self)
        if self._sending is not None:
            self._sending.cancel()

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes and answer every request that is complete (unless busy or blocked)."""
        if self._closing:
            return
        if self._buf:
            self._buf += data
        else:
            self._buf = data
            self.deadline = time.monotonic() + self.ctx.idle_timeout  # a new request head begins
        if self._sending is None and not self._write_paused:
            self._process()
        elif len(self._buf) > MAX_INPUT and not self._read_paused:
            self._read_paused = True
            self._transport().pause_reading()

    def eof_received(self) -> bool:
        """The client sent all it will: answer what is buffered, then close."""
        if self._closing:  # lingering (see _close): the client is done too
            return False
        self._eof = True
        if self._sending is None and not self._write_paused:
            self._process()
        return True  # keep the write side open for the answers still due

    def pause_writing(self) -> None:
        """The client lags behind: answer nothing more until it catches up."""
        self._write_paused = True
        self.deadline = time.monotonic() + self.ctx.idle_timeout

    def resume_writing(self) -> None:
        """The client caught up: carry on with the buffered requests."""
        self._write_paused = False
        self.deadline = time.monotonic() + self.ctx.idle_timeout
        if self._sending is None:
            self._process()

    # -- control ----------------------------------------------------------------------------------
    def timed_out(self) -> None:
        """Close the connection: it was idle, too slow sending a head, or not reading (no answer)."""
        log.debug("connection from %s timed out", self.client)
        self.abort()

    def abort(self, *, stopping: bool = False) -> None:
        """Close at once, dropping unsent data (server stop, timeouts, errors).

        An answer cut short is still logged, unless the server is ``stopping``.
        """
        self._closing = True
        self._quiet = self._quiet or stopping
        if self._sending is not None:  # first, so that sendfile lets go of the transport first
            self._sending.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        """Close after the answers already written have gone out.

        Unless the client has sent its EOF already, the write side is shut first (the client
        reads the answers, then EOF) and input is read and dropped until the client's EOF, for
        at most :data:`LINGER` seconds (then the sweep aborts the connection).
        """
        self._closing = True
        transport = self._transport()
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.deadline = time.monotonic() + min(LINGER, self.ctx.idle_timeout)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    # -- answering --------------------------------------------------------------------------------
    def _process(self) -> None:
        try:
            self._answer_buffered()
        except Exception:
            log.error("error while serving %s", self.client, exc_info=True)
            self.abort()

    def _answer_buffered(self) -> None:
        """Answer every complete request in the buffer, until a large body or backpressure."""
        buf, pos, pending, close, answered = self._buf, 0, 0, False, False
        out: list[Chunk] = []
        logged = self.ctx.access_log is not None or log.isEnabledFor(logging.DEBUG)
        heads, objects = self.ctx.heads, self.ctx.objects
        objects.refresh(time.monotonic())
        while not self._closing and not self._write_paused:  # answers wait while the client lags
            if pos == len(buf):
                close = self._eof
                break
            opened = objects.open(buf, pos)
            if opened is None:
                request, after = next_request(buf, pos)
                if request is None:
                    close = after < 0 or self._eof
                    pos = len(buf) if after < 0 else pos
                    break
                if request.expect_continue:
                    out.append(CONTINUE)
                answer = answer_to(request, heads, self.ctx.lookup)
            else:
                fd, size, keep_alive, after = opened
                answer = object_answer(heads, fd, size, keep_alive)
                deferred = type(answer) is Deferred
                request = _object_request(buf, pos, keep_alive) if logged or deferred else None
            pos, answered = after, True
            if isinstance(answer, Deferred) and answer.sendfile:  # large: at once if the socket takes it
                assert request is not None
                answer = self._send_now(out, request, answer)
            if isinstance(answer, Deferred):  # on disk, or large: answered by a task, in a batch
                assert request is not None
                batch = Batch()
                if batch.add(request, False, answer):
                    pos = self._fill(batch, buf, pos)
                self._buf = buf[pos:]
                self._flush(out)
                self._sending = asyncio.get_running_loop().create_task(self._send_later(batch))
                self._sending.add_done_callback(batch.close_when_done)
                return
            chunks, status, sent, keep = answer
            out += chunks
            pending += sent + 200
            if logged and request is not None:  # (a request on the short path is made only then)
                self._flush(out)
                pending = 0
                self._log(request, status, sent)
            if not keep:
                close = True
                pos = len(buf)
                break
            if pending > MAX_BATCH:
                self._flush(out)
                pending = 0
        self._buf = buf[pos:] if pos < len(buf) else b""
        self._flush(out)
        if self._closing:
            return
        if close:
            self._close()
            return
        if answered:  # progress: the next request head (or idle wait) has a fresh deadline
            self.deadline = time.monotonic() + self.ctx.idle_timeout
        if self._read_paused and len(self._buf) <= MAX_INPUT and not self._write_paused:
            self._read_paused = False
            self._transport().resume_reading()

    def _send_now(self, out: list[Chunk], request: Request, later: Deferred) -> Ready | Deferred:
        """Write the head of a large body and as much of it as the socket takes at once.

        The answer's record if the whole body went (the descriptor is closed), else ``later``
        with its head sent and :attr:`~rcds.serve.body.Deferred.sent` set: a task sends the rest.
        """
        keep = request.keep_alive
        out.append(self.ctx.heads.ok(later.is_root, later.size, keep))
        self._flush(out)
        later.started = True
        if self._closing or self._sock_fd < 0 or self._transport().get_write_buffer_size():
            return later
        try:
            later.sent, shrunk = send_now(self._sock_fd, later.fd, 0, later.size)
        except OSError as exc:  # the client went away
            log.debug("sending to %s failed: %s", self.client, exc)
            later.close()
            self.abort()
            return [], HTTPStatus.OK, later.sent, False
        if later.sent < later.size and not shrunk:
            return later
        later.close()
        return [], HTTPStatus.OK, later.sent, keep and not shrunk

    def _flush(self, out: list[Chunk]) -> None:
        if out:
            if not self._closing:
                self._transport().write(b"".join(out))
            out.clear()

    def _fill(self, batch: Batch, buf: bytes, pos: int) -> int:
        """Answer the requests after a cold one into ``batch`` while it has room; the new offset.

        Their bodies are tried in the page cache as long as at most a quarter of those tried
        were not there (a cold file among warm ones); after that they are all left to the
        batch's job (a cold tree: trying each would only add a failed read per file).
        """
        try:
            heads, objects = self.ctx.heads, self.ctx.objects
            tried = missed = 0
            while batch.has_room() and pos < len(buf):
                defer = missed * 4 > tried
                opened = objects.open(buf, pos)
                answer: Ready | Deferred
                if opened is None:
                    request, after = next_request(buf, pos)
                    if request is None:
                        break  # incomplete, or an empty line: left to _answer_buffered
                    answer = answer_to(request, heads, self.ctx.lookup, defer=defer)
                else:
                    fd, size, keep_alive, after = opened
                    answer = object_answer(heads, fd, size, keep_alive, defer=defer)
                    request = _object_request(buf, pos, keep_alive)
                if not defer:
                    tried += 1
                    missed += type(answer) is Deferred and not answer.sendfile
                pos = after
                if not batch.add(request, request.expect_continue, answer):
                    break
        except BaseException:
            batch.close()
            raise
        return pos

    async def _send_later(self, batch: Batch) -> None:
        """Read the batch's bodies in one worker-thread job, write its answers in order, send
        its large body with ``sendfile``, then answer the next requests."""
        transport, current, self._sent = self._transport(), batch.first_request(), 0
        keep = True
        try:
            if batch.unread:
                await asyncio.get_running_loop().run_in_executor(None, batch.read)
            keep, current = self._write_batch(batch), None
            if keep and batch.tail is not None and not self._closing:
                current, later = batch.tail
                keep = current.keep_alive
                head = b"" if later.started else self.ctx.heads.ok(later.is_root, later.size, keep)
                self._sent = later.sent
                await send_file(transport, head, later.take(), later.size, self._progress, later.sent)
                keep = keep and self._sent == later.size
        except (OSError, RuntimeError) as exc:  # the client went away, the transport closed, EIO
            log.debug("sending to %s failed: %s", self.client, exc)
            self._sending = None
            self.abort()
        except asyncio.CancelledError:  # the connection was lost or aborted meanwhile
            self._sending = None
            if current is not None and not self._quiet:
                self._log(current, HTTPStatus.OK, self._sent)
            raise
        finally:
            self._sending = None
        if current is not None:
            self._log(current, HTTPStatus.OK, self._sent)
        if self._closing:
            return
        if not keep:
            self._close()
            return
        self.deadline = time.monotonic() + self.ctx.idle_timeout
        self._process()

    def _write_batch(self, batch: Batch) -> bool:
        """Write the batch's answers in order (logging each); False if the connection ends."""
        out: list[Chunk] = []
        logged = self.ctx.access_log is not None or log.isEnabledFor(logging.DEBUG)
        keep = True
        for request, expect_continue, answer in batch:
            if self._closing:
                return False
            if expect_continue:
                out.append(CONTINUE)
            if isinstance(answer, Unread):
                data, size = answer.data, answer.later.size
                keep = request.keep_alive and len(data) == size  # a shrunk file breaks framing
                out += (self.ctx.heads.ok(answer.later.is_root, size, keep), data)
                status, sent = int(HTTPStatus.OK), len(data)
            else:
                chunks, status, sent, keep = answer
                out += chunks
            if logged:
                self._flush(out)
                self._log(request, status, sent)
            if not keep:
                break
        self._flush(out)
        return keep and not self._closing

    def _progress(self, sent: int) -> None:
        self._sent += sent
        self.deadline = time.monotonic() + self.ctx.idle_timeout

    def _log(self, request: Request, status: int, sent: int) -> None:
        record = AccessRecord(self.client, request.method, request.target, status, sent)
        log.debug('%s "%s %s" %d %d', record.client, record.method, record.target, status, sent)
        callback = self.ctx.access_log
        if callback is not None:
            try:
                callback(record)
            except Exception:
                log.error("access log callback failed for %s", self.client, exc_info=True)


def _object_request(buf: bytes, pos: int, keep_alive: bool) -> Request:
    """The :class:`Request` of an object ``GET`` taken on the short path (for batches and records)."""
    return Request("GET", ObjectGets.target(buf, pos), keep_alive, http11=True)
