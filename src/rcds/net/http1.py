"""A lean HTTP/1.1 client for plain ``http://``: prepared requests, raw keep-alive sockets.

Only what the fetcher needs: ``GET`` with a request prepared once as bytes (absolute-form
target and ``Host`` through a proxy, as CernVM-FS talks to Squid), and a response parser
that reads the status line, ``Content-Length``, ``Transfer-Encoding: chunked``,
``Connection`` and the proxy error headers :func:`~rcds.net.failures.classify_status`
looks at. Bodies are length-delimited, chunked or (``Connection: close`` / HTTP/1.0) end at
EOF. Every failure is raised as :class:`~rcds.net.failures.AttemptError` with the same
classification as the urllib3 transport; a connection that was closed by the server before
any byte of the response arrived raises :class:`StaleConnectionError` instead, so that the
caller can retry a kept-alive connection once.

:class:`Pool` keeps idle connections per endpoint (a proxy, or an origin when ``DIRECT``);
:class:`Connection` is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Mapping

from rcds.net.body import BodyLimits, BodyReader, ignore
from rcds.net.failures import AttemptError, Failure, Outcome, classify_exception, describe_exception
from rcds.record import SlotRecord

CHUNK_SIZE = 1 << 16
MAX_HEAD = 1 << 16
DRAIN_LIMIT = 1 << 16
_KEPT = frozenset({"content-length", "transfer-encoding", "connection", "x-squid-error", "proxy-status"})
_NEEDLES = tuple((key, f"\r\n{key}:") for key in _KEPT)
_NO_BODY = frozenset({204, 304})
_poll = getattr(select, "poll", None)


class StaleConnectionError(Exception):
    """The server closed the connection before sending any byte of the response.

    On a kept-alive connection this is the normal end of its life (retry on a fresh one);
    on a fresh connection it is the transient :attr:`failure`.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class Headers(Mapping[str, str]):
    """The kept response headers, looked up case-insensitively."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[str, str]) -> None:
        self._d = d

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class Head(SlotRecord):
    """A parsed response head: status, the kept headers, framing of the body.

    ``has_body`` is false for 204 and 304 (1xx responses are skipped). A mutable record,
    compared field by field (unhashable).
    """

    __match_args__ = ("status", "headers", "length", "chunked", "keep_alive", "bad_length", "has_body")
    __slots__ = __match_args__

    def __init__(
        self,
        status: int,
        headers: Headers,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
        bad_length: str | None = None,
        has_body: bool = True,
    ) -> None:
        self.status = status
        self.headers = headers
        self.length = length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.bad_length = bad_length
        self.has_body = has_body


def split_url(url: str) -> tuple[str, str, int, str]:
    """``(authority, host, port, path)`` of an ``http://`` URL (path includes the query).

    Raises :class:`ValueError` for anything else.
    """
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url!r}")
    rest = url[7:]
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = _authority(authority)
    return authority, host, port, path


_AUTHORITIES: dict[str, tuple[str, int]] = {}


def _authority(authority: str) -> tuple[str, int]:
    hit = _AUTHORITIES.get(authority)
    if hit is not None:
        return hit
    if not authority or "@" in authority:
        raise ValueError(f"unsupported authority {authority!r} (user info is not supported)")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"invalid IPv6 authority {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
    else:
        host, _, port_text = authority.rpartition(":")
        host, rest = (host, ":" + port_text) if host else (authority, "")
    if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
        raise ValueError(f"invalid port in {authority!r}")
    port = int(rest[1:]) if rest[1:] else 80
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in {authority!r}")
    if len(_AUTHORITIES) > 1024:
        _AUTHORITIES.clear()
    _AUTHORITIES[authority] = (host, port)
    return host, port


def request_bytes(target: str, authority: str, fixed_headers: str) -> bytes:
    """``GET target`` with ``Host: authority`` and the prepared ``fixed_headers`` lines."""
    return f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n{fixed_headers}\r\n".encode("latin-1")


class Connection:
    """One TCP connection with a read buffer; ``reused`` once it has served a response."""

    __slots__ = ("_buf", "_error", "_fd", "_pos", "chunk", "closed", "proxied", "reused", "served", "sock")

    def __init__(self, sock: socket.socket, proxied: bool) -> None:
        self.sock = sock
        self.proxied = proxied
        self.reused = False
        self.closed = False
        self.served = 0
        self.chunk = CHUNK_SIZE
        """Bytes asked for per receive (a pipelined download asks for more: fewer system calls)."""
        plain = type(sock) is socket.socket  # not a TLS socket: its descriptor carries records
        self._fd = sock.fileno() if plain and sock.gettimeout() is not None else -1
        """The socket's descriptor when it is a plain socket in non-blocking mode (a timeout, or
        0): read with :func:`os.read` first, which never waits (a socket with a timeout polls
        before each receive); -1 for a blocking or a TLS socket."""
        self._error: OSError | None = None
        """An error met by :meth:`read_ready`, raised by the next :meth:`recv`."""
        self._buf = b""
        self._pos = 0
        """``_buf[:_pos]`` was consumed already (by :meth:`buffered_ok_body`, which never copies
        the rest of the buffer); every other method first drops it (:meth:`_compact`)."""

    def _compact(self) -> bytes:
        """The unconsumed buffer, from its start."""
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0
        return self._buf

    @property
    def blame(self) -> Outcome:
        """Who is blamed for transfer problems: the proxy, or the host when direct."""
        return Outcome.PROXY if self.proxied else Outcome.HOST

    def alive(self) -> bool:
        """False when the peer closed (or sent unexpected bytes on) an idle connection."""
        if self._compact():
            return False
        try:
            if _poll is not None:  # no FD_SETSIZE limit, unlike select()
                poller = _poll()
                poller.register(self.sock, select.POLLIN)
                return not poller.poll(0)  # any event when idle: EOF, reset, unasked-for bytes
            readable, _, _ = select.select((self.sock,), (), (), 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        """Send ``data``; a failure on a kept-alive connection raises :class:`StaleConnectionError`."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            failure = classify_exception(exc, proxied=self.proxied)
            if self.reused:
                raise StaleConnectionError(failure) from exc
            raise AttemptError(failure) from exc

    def recv(self) -> bytes:
        """The next bytes from the socket (b"" at EOF); raises ``OSError``/``TimeoutError``.

        Bytes already there are read without a poll; otherwise the socket waits for them (at
        most its timeout, then ``TimeoutError``).
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._fd >= 0 and not self.closed:
            try:
                return os.read(self._fd, self.chunk)
            except BlockingIOError:
                pass
        return self.sock.recv(self.chunk)

    def read_ready(self) -> bool:
        """Append to the buffer what can be received without waiting, if the buffer holds less
        than :attr:`chunk` unconsumed bytes; True if bytes were added.

        For :meth:`buffered_ok_body` after it found a response incomplete: one more system
        call instead of the full parse. At end of file (or on an error, which the next
        :meth:`recv` raises) nothing is added: the full parse then sees it.
        """
        if self._fd < 0 or self.closed or self._error is not None or len(self._buf) - self._pos >= self.chunk:
            return False
        try:
            data = os.read(self._fd, self.chunk)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._error = exc
            return False
        if not data:
            return False  # end of file: the next receive sees it again
        rest = self._compact()
        self._buf = rest + data if rest else data
        return True

    def take(self) -> bytes:
        """The bytes received but not yet parsed (the buffer is then empty)."""
        data, self._buf = self._compact(), b""
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the buffer (the start of the next message)."""
        rest = self._compact()
        self._buf = data + rest if rest else data

    def read_head(self, stall: float) -> Head:
        """Read and parse the next response head (1xx responses are skipped)."""
        while True:
            head = self._read_one_head(stall)
            if not 100 <= head.status < 200:
                return head

    def _read_one_head(self, stall: float) -> Head:
        buf = self._compact()
        first = not buf
        while True:
            end = buf.find(b"\r\n\r\n")
            bare = buf.find(b"\n\n", 0, end if end >= 0 else len(buf))
            if bare >= 0:  # a head with bare LF line ends (tolerated)
                text, self._buf = buf[:bare].decode("latin-1"), buf[bare + 2 :]
                text = "\r\n".join(line.rstrip("\r") for line in text.split("\n"))
                break
            if end >= 0:
                text, self._buf = buf[:end].decode("latin-1"), buf[end + 4 :]
                break
            if len(buf) > MAX_HEAD:
                raise AttemptError(
                    Failure(self.blame, f"invalid response: headers longer than {MAX_HEAD} bytes", True)
                )
            try:
                data = self.recv()
            except TimeoutError as exc:
                raise AttemptError(
                    Failure(self.blame, f"timed out (no response within {stall:g} s)", True)
                ) from exc
            except OSError as exc:
                failure = classify_exception(exc, proxied=self.proxied)
                if first and not buf:
                    raise StaleConnectionError(failure) from exc
                raise AttemptError(failure) from exc
            if not data:
                if not buf:
                    raise StaleConnectionError(
                        Failure(
                            self.blame, "transfer failed (the connection was closed without a response)", True
                        )
                    )
                raise AttemptError(
                    Failure(
                        self.blame,
                        "transfer failed (the connection was closed in the response headers)",
                        True,
                    )
                )
            buf += data
        return self._parse_head(text)

    def _parse_head(self, text: str) -> Head:
        eol = text.find("\r\n")
        status_line = text if eol < 0 else text[:eol]
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit() or rest[3:4] not in ("", " "):
            shown = status_line[:80]
            raise AttemptError(Failure(self.blame, f"invalid response: bad status line {shown!r}", True))
        kept: dict[str, str] = {}
        if eol >= 0:
            low = text.lower()
            for key, needle in _NEEDLES:
                i = low.find(needle, eol)
                if i >= 0:
                    start = i + len(needle)
                    end = text.find("\r\n", start)
                    kept[key] = (text[start:end] if end >= 0 else text[start:]).strip()
        status = int(code)
        conn_tokens = kept.get("connection", "").lower()
        keep_alive = "close" not in conn_tokens and (version != "HTTP/1.0" or "keep-alive" in conn_tokens)
        chunked = "chunked" in kept.get("transfer-encoding", "").lower()
        length: int | None = None
        bad: str | None = None
        raw = kept.get("content-length")
        if raw is not None and not chunked:
            try:
                length = int(raw.split(",")[0].strip())
                if length < 0:
                    raise ValueError(raw)
            except ValueError:
                bad = f"invalid Content-Length {raw!r}"
        has_body = status not in _NO_BODY
        if length is None and not chunked and has_body:
            keep_alive = False  # the body ends at EOF
        return Head(status, Headers(kept), length, chunked, keep_alive, bad, has_body)

    def buffered_ok_body(self, max_size: int | None) -> bytes | None:
        """The body of the next response if it is already buffered whole and plainly a success.

        A success is ``HTTP/1.1 200`` with one decimal ``Content-Length`` (at most
        ``max_size``), kept alive, not chunked (the usual answer to a pipelined request for an
        object). The head and body are then consumed and the body returned without another
        system call or parse; for anything else (another status or framing, a body not
        complete in the buffer yet) nothing is consumed and None returned: :meth:`read_head`
        and :meth:`read_body` then handle it, with every check.
        """
        buf, pos = self._buf, self._pos
        if not buf.startswith(b"HTTP/1.1 200 ", pos):
            return None
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return None
        head = buf[pos : end + 2].lower()
        if b"\n\n" in head or b"\r\ntransfer-encoding:" in head:
            return None
        i = head.find(b"\r\nconnection:")
        if i >= 0 and b"close" in head[i : head.find(b"\r\n", i + 13)]:
            return None
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            return None
        raw = head[i + 17 : head.find(b"\r\n", i + 17)].strip()
        if not raw.isdigit() or head.find(b"\r\ncontent-length:", i + 17) >= 0:
            return None
        n = int(raw)
        start = end + 4
        if len(buf) - start < n or (max_size is not None and n > max_size):
            return None
        self._pos = start + n
        self.served += 1
        return buf[start : start + n]

    def read_body(self, head: Head, write: Callable[[bytes], object], limits: BodyLimits) -> int:
        """Pass the body of ``head`` to ``write``; returns its size. Checks every limit."""
        if not head.has_body:
            return 0
        if head.length is not None:
            buf = self._compact()
            n = head.length
            if len(buf) >= n and (limits.max_size is None or n <= limits.max_size):
                if n:  # the whole body is buffered already (small files, pipelining)
                    self._buf = buf[n:]
                    write(buf[:n] if len(buf) > n else buf)
                return n
        reader = BodyReader(self, write, limits, head.length)
        return reader.chunked() if head.chunked else reader.plain(head.length)

    def discard_body(self, head: Head, stall: float) -> bool:
        """Read and drop a small error body; False when the connection cannot be reused."""
        if not head.keep_alive:
            return False
        if not head.has_body:
            return True
        if head.length is None or head.length > DRAIN_LIMIT:
            return False
        try:
            self.read_body(head, ignore, BodyLimits(stall, 0, None))
        except AttemptError:
            return False
        return True


class Pool:
    """Idle keep-alive connections to one endpoint (thread safe).

    ``proxied`` says whether the endpoint is a proxy (failures are blamed on it).
    At most ``maxsize`` idle connections are kept; :meth:`close` closes them and makes the
    pool close every connection given back later.
    """

    def __init__(
        self, host: str, port: int, *, proxied: bool, connect: float, stall: float, maxsize: int
    ) -> None:
        self.host = host
        self.port = port
        self._lookup: str | bytes = host.encode("ascii") if host.isascii() else host
        """The host as ``getaddrinfo`` takes it: a ``str`` goes through the ``idna`` codec at every
        connect (its first use imports ``encodings.idna``, ``stringprep`` and ``unicodedata``: ~2.5
        ms of CPU in the start-up of ``rcds get``); an ASCII name needs no conversion."""
        self.proxied = proxied
        self.connect_timeout = connect
        self.stall = stall
        self.maxsize = maxsize
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> Connection:
        """An idle connection that still looks alive, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if conn.alive():
                return conn
            conn.close()

    def connect(self) -> Connection:
        """A new connection; raises :class:`AttemptError` when connecting fails."""
        try:
            address = (self._lookup, self.port)  # bytes: as getaddrinfo takes them, not typeshed
            sock = socket.create_connection(address, self.connect_timeout)  # type: ignore[arg-type]
        except OSError as exc:
            raise AttemptError(_connect_failure(exc, self.proxied, self.connect_timeout)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.stall)
        except OSError as exc:
            sock.close()
            raise AttemptError(_connect_failure(exc, self.proxied, self.connect_timeout)) from exc
        return Connection(sock, self.proxied)

    def release(self, conn: Connection) -> None:
        """Give back a connection whose last response was read completely."""
        conn.reused = True
        with self._lock:
            if not self._closed and len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; connections given back later are closed too."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _connect_failure(exc: OSError, proxied: bool, timeout: float) -> Failure:
    if isinstance(exc, socket.gaierror):
        return classify_exception(exc, proxied=proxied)
    blame = Outcome.PROXY if proxied else Outcome.HOST
    if isinstance(exc, TimeoutError):
        return Failure(blame, f"connect timed out (no answer within {timeout:g} s)", True)
    detail = describe_exception(exc)
    if proxied:
        return Failure(Outcome.PROXY, f"cannot connect to the proxy ({detail})", True)
    return Failure(blame, f"cannot connect ({detail})", True)
