"""The common request on a short path: an HTTP/1.1 ``GET`` of an object, ``data/<xx>/<name>``.

A client copying a tree sends thousands of these, pipelined, each with the same header lines.
:meth:`ObjectGets.open` recognises one at the start of the buffer with a single regular
expression over the bytes, and takes the verdict on its header lines (does the connection stay
open?) from a small table keyed by those lines' exact bytes. The table is filled by the general
parser (:func:`~rcds.serve.request.next_request`): a header block is entered only after that
parser read the same request line form and the same bytes, ending the head exactly where this
path does, with no error and no ``Expect``; so the short path decides exactly as the general one.

The object is then opened with one ``openat`` relative to a descriptor of its bucket directory
``<repository>/data/<xx>``, with ``O_NOFOLLOW``: its name is a single component (no ``/``, not
``.`` or ``..``), so nothing but that directory entry is resolved, and a symbolic link there
fails the open. The bucket descriptors are opened with ``openat2(RESOLVE_NO_SYMLINKS)`` on the
full path (the same rule as every other request: no link anywhere on the way), kept in a table
and all closed once they are :data:`DIR_SECONDS` old, so that a bucket directory replaced or
moved is seen within that time (as nginx's ``open_file_cache_valid``). Objects are named by the
hash of their bytes, so an object found through a bucket directory that was moved meanwhile
still has the bytes its name promises.

Anything else — another request form, an unknown header block, a repository not served, a
bucket that is a link or missing, a failed open, a file that is not regular — makes
:meth:`ObjectGets.open` return None, and the request goes the general way
(:func:`~rcds.serve.request.next_request`, :func:`~rcds.serve.answer.answer_to`), which
finds out what to answer. Where ``openat2`` is unavailable the short path is off.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable

from rcds.format import names
from rcds.serve.openat2 import available, open_no_symlinks
from rcds.serve.request import next_request

DIR_SECONDS = 1.0
"""Bucket directory descriptors are closed (and opened again when needed) this often."""

MAX_VERDICTS = 64
"""Distinct header blocks remembered (the table is emptied when full)."""

MAX_BLOCK = 4096
"""Longer header blocks are never remembered (they always take the general way)."""

_OBJECT_GET = re.compile(
    rb"GET /cvmfs/(" + names.TOKEN.encode() + rb")/data/([0-9a-f]{2})/"
    rb"([A-Za-z0-9_,+=@~-][A-Za-z0-9._,+=@~-]{0,254}) HTTP/1\.1\r\n"
)
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC if hasattr(os, "O_PATH") else -1

Opened = tuple[int, int, bool, int]
"""An object opened by the short path: descriptor (the caller closes it), size, whether the
connection stays open after the answer, offset just after the request head."""


class ObjectGets:
    """The short path of one server (used from its event loop thread only)."""

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self._lookup = lookup
        self._match = _OBJECT_GET.match
        self._verdicts: dict[bytes, bool] = {}
        self._dirs: dict[tuple[str, bytes], int] = {}
        self._expires = 0.0

    def refresh(self, now: float) -> None:
        """Close the bucket descriptors if they are :data:`DIR_SECONDS` old at ``now`` (monotonic)."""
        if now >= self._expires:
            self.close()
            self._expires = now + DIR_SECONDS

    def close(self) -> None:
        """Close every bucket descriptor (idempotent; they are opened again when needed)."""
        dirs, self._dirs = self._dirs, {}
        for fd in dirs.values():
            os.close(fd)

    def open(self, buf: bytes, pos: int) -> Opened | None:
        """Open the object of the request at ``buf[pos]``, or None: the general way decides."""
        m = self._match(buf, pos)
        if m is None:
            return None
        start = m.end()
        end = buf.find(b"\r\n\r\n", start - 2)
        if end < 0:
            return None
        after = end + 4
        keep = self._verdicts.get(buf[start:after])
        if keep is None:
            self._learn(buf, pos, start, after)
            return None
        name, bucket, leaf = m.groups()
        root = self._lookup(name.decode())
        if root is None:
            return None
        dirfd = self._dirs.get((root, bucket))
        if dirfd is None:
            dirfd = self._open_dir(root, bucket)
            if dirfd < 0:
                return None
        try:
            fd = os.open(leaf, _FLAGS, dir_fd=dirfd)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return fd, info.st_size, keep, after

    @staticmethod
    def target(buf: bytes, pos: int) -> str:
        """The request target of the object request at ``buf[pos]`` (for records)."""
        return str(buf[pos + 4 : buf.index(b" ", pos + 4)], "latin-1")

    def _learn(self, buf: bytes, pos: int, start: int, after: int) -> None:
        """Remember the verdict on the header block ``buf[start:after]`` if the general parser
        reads the request at ``pos`` the same way (see the module documentation)."""
        if after - start > MAX_BLOCK:
            return
        request, end = next_request(buf, pos)
        if request is None or request.error is not None or end != after or request.expect_continue:
            return
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.clear()
        self._verdicts[buf[start:after]] = request.keep_alive

    def _open_dir(self, root: str, bucket: bytes) -> int:
        if _DIR_FLAGS < 0 or not available():
            return -1
        try:
            fd = open_no_symlinks(f"{root}/data/{bucket.decode()}", _DIR_FLAGS)
        except OSError:
            return -1
        if fd >= 0:
            self._dirs[(root, bucket)] = fd
        return fd
