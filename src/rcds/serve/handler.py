"""Request handling: which request targets map to which files, and the HTTP/1.1 handler.

A request target ``/cvmfs/<name>/<path>`` names the file ``<dir>/<path>`` of repository
``<name>``. Only these paths are acceptable (checked on the decoded path as requested *and*
on the path the file resolves to, so a symlink cannot lead anywhere the URL could not):

* a single top-level component starting with ``.cvmfs`` (``.cvmfspublished``, ...);
* ``data/<2 lowercase hex>/<name>`` (objects; ``data/txn`` is the writers' temp area);
* any other path whose components do not start with ``.``.

Every component is non-empty (no ``//``), at most 255 characters from
``[A-Za-z0-9._,+=@~-]`` after percent-decoding (so no ``/``, ``\\``, NUL, ``%`` or spaces),
and the resolved file must lie inside the resolved repository directory. Whatever breaks a
rule is reported as :class:`~rcds.errors.NotFoundError`, exactly like a missing file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from io import FileIO
from typing import Protocol, cast
from urllib.parse import unquote

from rcds.errors import NotFoundError, StorageError

URL_PREFIX = "/cvmfs/"
"""The path prefix under which repositories are served."""

ROOT_FILE_PREFIX = ".cvmfs"
"""Basenames with this prefix are root files (manifest, whitelist, ...)."""

_MAX_TARGET = 4096
_COMPONENT = re.compile(r"[A-Za-z0-9._,+=@~-]{1,255}")
_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_BUCKET = re.compile(r"[0-9a-f]{2}")
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

ROOT_CONTENT_TYPE = "application/x-cvmfs"
"""Content type of ``.cvmfs*`` root files."""

OBJECT_CONTENT_TYPE = "application/octet-stream"
"""Content type of everything else (objects)."""

log = logging.getLogger("rcds.serve.http")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request target: the repository name and the path components inside it."""

    repository: str
    parts: tuple[str, ...]

    @property
    def is_root_file(self) -> bool:
        """True if the basename starts with ``.cvmfs`` (short-lived root files)."""
        return self.parts[-1].startswith(ROOT_FILE_PREFIX)


def is_valid_repository_name(name: str) -> bool:
    """True if ``name`` can be served (``[A-Za-z0-9][A-Za-z0-9._-]*``, e.g. an fqrn)."""
    return _REPOSITORY.fullmatch(name) is not None


def is_allowed(parts: Sequence[str]) -> bool:
    """True if the path components ``parts`` (relative to a repository) may be served."""
    if not parts or not all(_COMPONENT.fullmatch(part) for part in parts):
        return False
    head = parts[0]
    if head.startswith("."):
        return len(parts) == 1 and head.startswith(ROOT_FILE_PREFIX)
    if any(part.startswith(".") for part in parts):
        return False
    if head == "data":
        return len(parts) == 3 and _BUCKET.fullmatch(parts[1]) is not None
    return True


def _strip_authority(raw: str) -> str:
    """Reduce an absolute-form target (``http://host/path``) to its path (RFC 9112 §3.2.2)."""
    lowered = raw[:8].lower()
    for scheme in ("http://", "https://"):
        if lowered.startswith(scheme):
            rest = raw[len(scheme) :]
            end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
            return rest[end:] if rest[end : end + 1] == "/" else "/"
    return raw


def parse_target(raw: str) -> Target:
    """Parse a raw request target into a :class:`Target`; the query string is ignored.

    Raises :class:`~rcds.errors.NotFoundError` for anything that is not an acceptable
    ``/cvmfs/<name>/<path>`` target.
    """
    if len(raw) > _MAX_TARGET:
        raise NotFoundError("request target too long")
    path = _strip_authority(raw).split("?", 1)[0]
    if not path.startswith(URL_PREFIX):
        raise NotFoundError(f"{raw!r} is not under {URL_PREFIX}")
    try:
        name, *parts = (unquote(seg, errors="strict") for seg in path[len(URL_PREFIX) :].split("/"))
    except UnicodeDecodeError:
        raise NotFoundError(f"{raw!r} is not valid percent-encoded UTF-8") from None
    if not is_valid_repository_name(name) or not is_allowed(parts):
        raise NotFoundError(f"{raw!r} does not name a servable file")
    return Target(name, tuple(parts))


def open_file(root: str, parts: Sequence[str]) -> tuple[FileIO, int]:
    """Open the regular file ``parts`` under the resolved directory ``root``; return it and its size.

    The size comes from ``fstat`` on the opened descriptor, so the pair stays consistent even
    if the path is atomically replaced meanwhile. Raises :class:`~rcds.errors.NotFoundError`
    if the file is missing, not a regular file, or resolves outside ``root`` or to a path
    :func:`is_allowed` refuses; :class:`~rcds.errors.StorageError` on other I/O errors.
    """
    real = os.path.realpath(os.path.join(root, *parts))
    prefix = root.rstrip(os.sep) + os.sep
    if not real.startswith(prefix) or not is_allowed(real[len(prefix) :].split(os.sep)):
        raise NotFoundError(f"{'/'.join(parts)} resolves outside the servable files of {root}")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in _MISSING:
            raise NotFoundError(f"{real} does not exist") from None
        raise StorageError(f"cannot open {real}: {exc.strerror}; check its permissions and disk") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFoundError(f"{real} is not a regular file")
        return FileIO(fd, "rb", closefd=True), info.st_size
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One answered request, as given to the ``access_log`` callback."""

    client: str
    method: str
    target: str
    status: int
    sent: int
    """Body bytes actually sent (0 for HEAD)."""


AccessLog = Callable[[AccessRecord], None]


class ServerSettings(Protocol):
    """What :class:`RequestHandler` needs from its server."""

    root_max_age: int
    object_max_age: int
    idle_timeout: float
    access_log: AccessLog | None

    def root_of(self, name: str) -> str:
        """The resolved directory of repository ``name``; NotFoundError if not served."""
        ...


class RequestHandler(BaseHTTPRequestHandler):
    """Answers ``GET``/``HEAD`` for repository files; 404 for anything else, 405 for other methods."""

    protocol_version = "HTTP/1.1"
    server_version = "rcds"
    default_request_version = "HTTP/1.1"  # always answer with a status line, even to garbage
    disable_nagle_algorithm = True

    @property
    def _srv(self) -> ServerSettings:
        return cast(ServerSettings, self.server)

    def setup(self) -> None:
        """Set up the streams and the idle timeout of the connection."""
        super().setup()
        self.connection.settimeout(self._srv.idle_timeout)

    def version_string(self) -> str:
        """The ``Server`` header value (no Python version)."""
        return self.server_version

    def parse_request(self) -> bool:
        """Parse the request; answer 405 to anything but GET/HEAD."""
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # any request body stays unread
            self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, body=True)
            return False
        if (
            self.headers.get("Content-Length", "0").strip() not in ("", "0")
            or "Transfer-Encoding" in self.headers
        ):
            self.close_connection = True  # a body we do not read would be taken for the next request
        return True

    def do_GET(self) -> None:
        """Send a file with its body."""
        self._serve(body=True)

    def do_HEAD(self) -> None:
        """Send a file's headers only."""
        self._serve(body=False)

    def _raw_target(self) -> str:
        # self.path is already altered by the stdlib ("//x" -> "/x"); judge the raw target.
        words = self.requestline.split()
        return words[1] if len(words) >= 2 else ""

    def _serve(self, body: bool) -> None:
        srv = self._srv
        try:
            target = parse_target(self._raw_target())
            f, size = open_file(srv.root_of(target.repository), target.parts)
        except NotFoundError:
            self._send_error(HTTPStatus.NOT_FOUND, body=body)
            return
        except StorageError as exc:
            log.warning("%s", exc)
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, body=body)
            return
        with f:
            now = time.time()
            if target.is_root_file:
                ctype, cache, max_age = ROOT_CONTENT_TYPE, f"max-age={srv.root_max_age}", srv.root_max_age
            else:
                ctype, max_age = OBJECT_CONTENT_TYPE, srv.object_max_age
                cache = f"public, max-age={max_age}, immutable"
            self._start(HTTPStatus.OK, now)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", cache)
            self.send_header("Expires", formatdate(now + max_age, usegmt=True))
            sent = self._finish(f if body else None, size)
        self._access(HTTPStatus.OK, sent)

    def _start(self, status: HTTPStatus, now: float) -> None:
        self.send_response_only(status)
        self.send_header("Server", self.version_string())
        self.send_header("Date", formatdate(now, usegmt=True))

    def _finish(self, body: FileIO | bytes | None, size: int) -> int:
        """Send the connection header, the headers and ``body`` (``size`` bytes); return bytes sent."""
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        sock: socket.socket = self.connection
        cork = getattr(socket, "TCP_CORK", None)  # headers and body in as few segments as possible
        sent = 0
        try:
            if cork is not None:
                sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            self.end_headers()
            if isinstance(body, bytes):
                self.wfile.write(body)
                sent = len(body)
            elif body is not None and size:
                sent = sock.sendfile(body, 0, size)
        except OSError as exc:  # the client went away or timed out
            log.debug("sending to %s failed: %s", self.address_string(), exc)
            self.close_connection = True
        finally:
            if cork is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, cork, 0)
        if body is not None and sent != size:  # e.g. the file shrank in place: framing is broken
            self.close_connection = True
        return sent

    def _send_error(self, status: HTTPStatus, body: bool) -> None:
        payload = f"{status.value} {status.phrase}\n".encode()
        self._start(status, time.time())
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self._access(status, self._finish(payload if body else None, len(payload)))

    def _access(self, status: int, sent: int) -> None:
        record = AccessRecord(self.address_string(), self.command or "-", self._raw_target(), status, sent)
        log.debug('%s "%s %s" %d %d', record.client, record.method, record.target, status, sent)
        callback = self._srv.access_log
        if callback is not None:
            callback(record)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a malformed request (the stdlib's parser calls this) plainly, then close."""
        self.close_connection = True
        self._send_error(HTTPStatus(code), body=self.command != "HEAD")

    def log_message(self, format: str, *args: object) -> None:
        """Route the stdlib's messages to the ``rcds.serve.http`` logger at DEBUG."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)
