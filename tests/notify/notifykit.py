"""Helpers for the notification tests: signed manifests at any revision, a stock-like raw subscriber."""

from __future__ import annotations

import socket
import threading

from rcds.format import keys
from rcds.format.notification import Activity, parse_activity
from rcds.publish.stratum0 import Stratum0

from testkit import wait_until as wait_until  # re-exported: notifykit.wait_until


class Signer:
    """Signs manifests of a repository at chosen revisions (notifications for tests)."""

    def __init__(self, s0: Stratum0) -> None:
        self.s0 = s0
        self.key = keys.load_private_key(s0.layout.key("key").read_bytes())
        self.base = s0.manifest()

    def manifest(self, revision: int) -> bytes:
        """A validly signed manifest claiming ``revision`` (same root catalog)."""
        return self.base.evolve(revision=revision).sign(self.key)

    def activity(self, revision: int) -> Activity:
        """The activity message of :meth:`manifest`."""
        return Activity.of(self.manifest(revision))


def stock_request(port: int, repository: str, prefix: str = "") -> bytes:
    """Exactly what stock's SubscriberSSE sends through libcurl (CUSTOMREQUEST GET + POSTFIELDS)."""
    body = ('{"version":1,"repository":"' + repository + '"}').encode()
    return (
        f"GET {prefix}/notifications/subscribe HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "User-Agent: cvmfs/2.11.2\r\n"
        "Accept: */*\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "\r\n"
    ).encode() + body


class StockSubscriber:
    """A raw-socket subscriber that parses exactly like stock ``SubscriberSSE::CurlRecvCB``.

    HTTP/1.1 chunked transfer coding is undone here (curl does that for stock); every decoded
    piece then goes through stock's line logic: the first line is appended to the buffer (minus a
    ``data: `` prefix), and if the piece had a line break the buffer is consumed as one message.
    A message that is not an activity is an error (stock aborts the transfer then).
    """

    def __init__(self, port: int, repository: str, prefix: str = "", *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(stock_request(port, repository, prefix))
        self.head = b""
        self.messages: list[Activity] = []
        self.errors: list[str] = []
        self.ended = threading.Event()
        self._buffer = ""
        self._raw = b""

    def read_head(self) -> bytes:
        """Read the response head (status line and headers)."""
        while b"\r\n\r\n" not in self._raw:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the head")
            self._raw += chunk
        self.head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        return self.head

    def run(self) -> None:
        """Read and consume until the connection ends (run in a thread)."""
        try:
            if not self.head:
                self.read_head()
            while True:
                piece = self._next_chunk()
                if piece is None:
                    break
                self._consume(piece.decode())
        except OSError as exc:
            self.errors.append(f"socket: {exc}")
        finally:
            self.ended.set()

    def _next_chunk(self) -> bytes | None:
        while b"\r\n" not in self._raw:
            more = self.sock.recv(65536)
            if not more:
                self.errors.append("connection ended without the last chunk")
                return None
            self._raw += more
        size_line, _, rest = self._raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            more = self.sock.recv(65536)
            if not more:
                self.errors.append("connection ended inside a chunk")
                return None
            rest += more
        self._raw = rest[size + 2 :]
        if size == 0:
            return None  # a clean end: stock's subscription "ends successfully" and is not renewed
        return rest[:size]

    def _append(self, line: str) -> None:
        self._buffer += line[6:] if line.startswith("data: ") else line

    def _consume(self, text: str) -> None:
        lines = text.split("\n")
        self._append(lines[0])
        if len(lines) == 1:
            return
        message, self._buffer = self._buffer, ""
        for line in lines[1:]:
            if line.startswith("data: "):
                self._append(line)
        try:
            self.messages.append(parse_activity(message))
        except Exception as exc:  # stock: kError, curl aborts
            self.errors.append(f"not an activity: {message[:80]!r}: {exc}")
            raise OSError("stock would abort here") from None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
