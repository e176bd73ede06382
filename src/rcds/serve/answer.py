"""The answer to one parsed request: in memory (:data:`Ready`), or :class:`~rcds.serve.body.Deferred`.

A file is opened under the path rules of :mod:`rcds.serve.handler`; a small body the page
cache holds is read at once (:func:`~rcds.serve.body.read_cached`), a large one or one that
would wait for the disk is left open for the connection to send later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from http import HTTPStatus

from rcds.errors import NotFoundError, StorageError
from rcds.serve.body import SMALL_BODY, Deferred, read_cached
from rcds.serve.handler import open_fd, parse_target
from rcds.serve.request import Request
from rcds.serve.response import Heads

Chunk = bytes | bytearray
Ready = tuple[list[Chunk], int, int, bool]
"""An answer in memory: chunks to write, status, body bytes, whether the connection stays open."""

log = logging.getLogger("rcds.serve.http")
_OK = int(HTTPStatus.OK)  # a plain int: an enum member costs a descriptor call per use


def answer_to(
    request: Request, heads: Heads, lookup: Callable[[str], str | None], *, defer: bool = False
) -> Deferred | Ready:
    """The answer to ``request``; ``lookup`` gives a served repository's directory (or None).

    ``defer=True`` leaves every non-empty body to be read later, without trying the page cache
    first (for requests that wait behind one already known to need the disk).
    """
    if request.error is not None:
        return error(heads, request.error, request.method != "HEAD", False)
    if request.method not in ("GET", "HEAD"):
        return error(heads, HTTPStatus.METHOD_NOT_ALLOWED, True, False)  # any body stays unread
    body = request.method == "GET"
    try:
        target = parse_target(request.target)
        root = lookup(target.repository)
        if root is None:
            raise NotFoundError(f"repository {target.repository} is not served here")
        fd, size = open_fd(root, target.parts, parts_allowed=True)
    except NotFoundError:
        return error(heads, HTTPStatus.NOT_FOUND, body, request.keep_alive)
    except StorageError as exc:
        log.warning("%s", exc)
        return error(heads, HTTPStatus.INTERNAL_SERVER_ERROR, body, request.keep_alive)
    if body and size > SMALL_BODY:
        return Deferred(fd, size, target.is_root_file, sendfile=True)
    if defer and body and size:
        return Deferred(fd, size, target.is_root_file, sendfile=False)
    try:
        data = read_cached(fd, size) if body and size else b""
    except BaseException:
        os.close(fd)
        raise
    if data is None:  # it would wait for the disk: read in a worker thread
        return Deferred(fd, size, target.is_root_file, sendfile=False)
    os.close(fd)
    keep = request.keep_alive and (not body or len(data) == size)  # a shrunk file breaks framing
    head = heads.ok(target.is_root_file, size, keep)
    return ([head, data] if data else [head]), HTTPStatus.OK, len(data), keep


def object_answer(
    heads: Heads, fd: int, size: int, keep_alive: bool, *, defer: bool = False
) -> Deferred | Ready:
    """The answer to a ``GET`` of the object opened as ``fd`` (:meth:`~rcds.serve.objects.ObjectGets.open`),
    decided as :func:`answer_to` decides for any ``GET`` of a file that is not a root file."""
    if size > SMALL_BODY:
        return Deferred(fd, size, False, sendfile=True)
    if defer and size:
        return Deferred(fd, size, False, sendfile=False)
    try:
        data = read_cached(fd, size) if size else b""
    except BaseException:
        os.close(fd)
        raise
    if data is None:
        return Deferred(fd, size, False, sendfile=False)
    os.close(fd)
    keep = keep_alive and len(data) == size
    head = heads.ok(False, size, keep)
    return ([head, data] if data else [head]), _OK, len(data), keep


def error(heads: Heads, status: HTTPStatus, body: bool, keep: bool) -> Ready:
    """An error answer (with its short body unless ``body`` is False, as for ``HEAD``)."""
    head, payload = heads.error(status, keep)
    return ([head, payload] if body else [head]), status, len(payload) if body else 0, keep
