"""One client connection of the repository server: an :class:`asyncio.Protocol`.

Request heads are parsed from whatever arrives (:mod:`rcds.serve.request`); several requests
in one read (HTTP/1.1 pipelining) are answered in order. Small bodies are read with the head
and written in one go (the answers to one read are joined into one write when no access log
is installed); bodies above :data:`~rcds.serve.body.SMALL_BODY`, and small ones not in the page
cache, are sent by a task (:mod:`rcds.serve.body`) while later pipelined requests wait. When the client does
not read (the transport asks to pause writing), no further requests are answered and, beyond
:data:`MAX_INPUT` unanswered bytes, no further input is read. A connection that stays idle,
takes longer than the idle timeout for one request head, or makes no progress reading an
answer for that long is closed by the server's sweep (:meth:`Connection.timed_out`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from http import HTTPStatus
from typing import Protocol

from rcds.errors import NotFoundError, StorageError
from rcds.serve.body import SMALL_BODY, Deferred, read_and_close, read_cached, send_file
from rcds.serve.handler import AccessLog, AccessRecord, open_fd, parse_target
from rcds.serve.request import MAX_HEAD, Request, next_request
from rcds.serve.response import CONTINUE, Heads

_Chunk = bytes | bytearray

MAX_BATCH = 256 * 1024
"""Answers to pipelined requests are written out once this many bytes are pending."""

MAX_INPUT = 2 * MAX_HEAD
"""Reading stops while this many bytes of unanswered requests are buffered."""

log = logging.getLogger("rcds.serve.http")


class ServerContext(Protocol):
    """What a :class:`Connection` needs from its server."""

    heads: Heads
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

    # -- asyncio callbacks ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server and start the idle clock."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
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
        """Close after the answers already written have gone out."""
        self._closing = True
        self._transport().close()

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
        out: list[_Chunk] = []
        logged = self.ctx.access_log is not None or log.isEnabledFor(logging.DEBUG)
        while not self._closing and not self._write_paused:  # answers wait while the client lags
            if pos == len(buf):
                close = self._eof
                break
            request, after = next_request(buf, pos)
            if request is None:
                close = after < 0 or self._eof
                pos = len(buf) if after < 0 else pos
                break
            pos, answered = after, True
            if request.expect_continue:
                out.append(CONTINUE)
            answer = self._answer(request)
            if isinstance(answer, Deferred):
                self._buf = buf[pos:]
                self._flush(out)
                self._sending = asyncio.get_running_loop().create_task(self._send_later(request, answer))
                self._sending.add_done_callback(answer.close_when_done)
                return
            chunks, status, sent, keep = answer
            out += chunks
            pending += sent + 200
            if logged:
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

    def _flush(self, out: list[_Chunk]) -> None:
        if out:
            if not self._closing:
                self._transport().write(b"".join(out))
            out.clear()

    def _answer(self, request: Request) -> Deferred | tuple[list[_Chunk], int, int, bool]:
        """The answer to one request: chunks to write, status, body bytes, whether to keep alive."""
        if request.error is not None:
            return self._error(request.error, request.method != "HEAD", False)
        if request.method not in ("GET", "HEAD"):
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, True, False)  # any body stays unread
        body = request.method == "GET"
        try:
            target = parse_target(request.target)
            root = self.ctx.lookup(target.repository)
            if root is None:
                raise NotFoundError(f"repository {target.repository} is not served here")
            fd, size = open_fd(root, target.parts, parts_allowed=True)
        except NotFoundError:
            return self._error(HTTPStatus.NOT_FOUND, body, request.keep_alive)
        except StorageError as exc:
            log.warning("%s", exc)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, body, request.keep_alive)
        if body and size > SMALL_BODY:
            return Deferred(fd, size, target.is_root_file, sendfile=True)
        try:
            data = read_cached(fd, size) if body and size else b""
        except BaseException:
            os.close(fd)
            raise
        if data is None:  # it would wait for the disk: read in a worker thread
            return Deferred(fd, size, target.is_root_file, sendfile=False)
        os.close(fd)
        keep = request.keep_alive and (not body or len(data) == size)  # a shrunk file breaks framing
        head = self.ctx.heads.ok(target.is_root_file, size, keep)
        return ([head, data] if data else [head]), HTTPStatus.OK, len(data), keep

    def _error(self, status: HTTPStatus, body: bool, keep: bool) -> tuple[list[_Chunk], int, int, bool]:
        head, payload = self.ctx.heads.error(status, keep)
        return ([head, payload] if body else [head]), status, len(payload) if body else 0, keep

    async def _send_later(self, request: Request, later: Deferred) -> None:
        """Send a deferred body (``sendfile``, or read in a thread), then answer the next requests."""
        transport, keep, self._sent = self._transport(), request.keep_alive, 0
        try:
            if later.sendfile:
                head = self.ctx.heads.ok(later.is_root, later.size, keep)
                await send_file(transport, head, later.take(), later.size, self._progress)
            else:
                loop = asyncio.get_running_loop()
                data = await loop.run_in_executor(None, read_and_close, later.take(), later.size)
                keep = keep and len(data) == later.size
                if not self._closing:
                    transport.write(self.ctx.heads.ok(later.is_root, later.size, keep) + data)
                    self._sent = len(data)
        except (OSError, RuntimeError) as exc:  # the client went away, the transport closed, EIO
            log.debug("sending to %s failed: %s", self.client, exc)
            self._sending = None
            self.abort()
        except asyncio.CancelledError:  # the connection was lost or aborted meanwhile
            self._sending = None
            if not self._quiet:
                self._log(request, HTTPStatus.OK, self._sent)
            raise
        finally:
            self._sending = None
        self._log(request, HTTPStatus.OK, self._sent)
        if self._closing:
            return
        if self._sent != later.size or not keep:
            self._close()
            return
        self._process()

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
