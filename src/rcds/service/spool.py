"""The spool: uploads stream to disk (temp file, fsync, rename) and wait there to be published.

::

    spool/
      incoming/  uploads in progress (``<random>.part``); emptied at start-up
      queue/     complete uploads ``<cid with / as %2F>.tar`` — requeued after a restart

An interrupted upload leaves nothing behind; an upload over the size limit or larger than the
free disk space is refused before or while it streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from rcds.errors import InputError, StorageError
from rcds.storage.local import start_writeback

if TYPE_CHECKING:
    from rcds.service.live import LiveFeed

DISK_RESERVE = 256 << 20
"""Bytes always left free on the spool's filesystem."""
WRITEBACK_BYTES = 8 << 20
"""Writing an upload to disk starts every this many bytes, so its fsync at the end (and the
publish's ``syncfs``) find little left to write."""
MAX_CID_LENGTH = 240
"""The longest CID the service takes, so that its file names here (``/`` as ``%2F``, a suffix) fit
in the 255 bytes a file name may have."""


def cid_filename(cid: str, suffix: str) -> str:
    """The file name of ``cid`` in a flat directory (CIDs never contain ``%``, so it is reversible)."""
    return cid.replace("/", "%2F") + suffix


class TooLargeError(InputError):
    """The upload is larger than the configured maximum (HTTP 413)."""


class StalledError(InputError):
    """The client stopped sending the upload (HTTP 408)."""


class NoSpaceError(StorageError):
    """The spool's disk cannot take the upload (HTTP 507)."""


@dataclass(frozen=True)
class Spooled:
    """A complete upload waiting in the queue directory."""

    cid: str
    path: Path
    size: int


_DIGEST_BY_LENGTH = {64: "sha256", 40: "sha1"}
_HEX = re.compile(r"[0-9a-f]+")


def content_digest(cid: str) -> str | None:
    """The hash algorithm a CID's last component names by its length (sha256, sha1), if any."""
    last = cid.rsplit("/", 1)[-1]
    return _DIGEST_BY_LENGTH.get(len(last)) if _HEX.fullmatch(last) else None


class Upload:
    """One upload being written; call :meth:`write` per block, then :meth:`commit` or :meth:`abort`.

    When the CID ends in a 64- or 40-hex-digit hash (sha256 or sha1, as today's clients make
    them), the content must hash to it: a CID can never name other content.
    """

    def __init__(self, spool: Spool, cid: str, expected: int | None) -> None:
        self.spool = spool
        self.cid = cid
        self.size = 0
        algo = content_digest(cid) if spool.check_digest else None
        self._digest = hashlib.new(algo) if algo else None
        if expected is not None:
            self._check(expected)  # before creating the file, so a refusal leaves nothing behind
        self.tmp = spool.incoming / f"{secrets.token_hex(8)}.part"
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        self._unflushed = 0
        self.feed: LiveFeed | None = None
        """Set when a publish worker reads the upload as it arrives (:mod:`rcds.service.live`)."""

    def _check(self, total: int) -> None:
        if total > self.spool.max_size:
            raise TooLargeError(
                f"upload of {total} bytes exceeds the maximum of {self.spool.max_size} bytes", self.cid
            )
        free = shutil.disk_usage(self.spool.root).free
        if total - self.size > free - DISK_RESERVE:
            raise NoSpaceError(
                f"the server's spool has only {free >> 20} MiB free; try the other server or later"
            )

    def write(self, block: bytes) -> None:
        """Append a block, enforcing the size limit as the data arrives."""
        if self.size + len(block) > self.spool.max_size:
            raise TooLargeError(f"upload exceeds the maximum of {self.spool.max_size} bytes", self.cid)
        try:
            self._f.write(block)
            self._unflushed += len(block)
            if self.feed is not None or self._unflushed >= WRITEBACK_BYTES:
                self._f.flush()  # a live worker reads the file: every byte counted must be in it
            if self._unflushed >= WRITEBACK_BYTES:
                self._unflushed = 0
                start_writeback(self._f.fileno())
            if self._digest is not None:
                self._digest.update(block)
        except OSError as exc:
            raise NoSpaceError(f"cannot write the upload to the spool: {exc.strerror}") from None
        self.size += len(block)
        if self.feed is not None:
            self.feed.grew(self.size)

    def commit(self) -> Spooled:
        """Make the upload durable and move it to the queue directory."""
        if self._digest is not None and self._digest.hexdigest() != self.cid.rsplit("/", 1)[-1]:
            self.abort()
            raise InputError(
                f"the uploaded content's {self._digest.name} is {self._digest.hexdigest()}, "
                f"which does not match cid {self.cid}; the upload was truncated or the cid is wrong",
                self.cid,
            )
        if self.feed is not None:
            self._f.flush()
            self.feed.grew(self.size)
            self.feed.verified()  # complete and matching: a live publish may commit its revision
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            final = self.spool.queue / cid_filename(self.cid, ".tar")
            os.rename(self.tmp, final)
        except OSError as exc:
            self.abort()
            raise NoSpaceError(f"cannot store the upload in the spool: {exc.strerror}") from None
        return Spooled(self.cid, final, self.size)

    def abort(self) -> None:
        """Discard the partial upload."""
        if self.feed is not None:
            self.feed.aborted()
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class Spool:
    """Upload storage on local disk."""

    def __init__(self, root: Path, max_size: int, *, check_digest: bool = True) -> None:
        self.root = Path(root)
        self.max_size = max_size
        self.check_digest = check_digest
        self.incoming = self.root / "incoming"
        self.queue = self.root / "queue"
        for d in (self.incoming, self.queue):
            d.mkdir(parents=True, exist_ok=True)

    def start(self, cid: str, expected: int | None) -> Upload:
        """Begin an upload; TooLargeError or NoSpaceError at once if ``expected`` already says so."""
        return Upload(self, cid, expected)

    def clean_incoming(self) -> int:
        """Remove leftovers of uploads interrupted by a crash; return how many."""
        n = 0
        for p in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

    def pending(self) -> list[Spooled]:
        """Complete uploads still waiting (oldest first), for requeueing after a restart."""
        items = []
        for p in sorted(self.queue.glob("*.tar"), key=lambda p: p.stat().st_mtime):
            items.append(Spooled(unquote(p.name[: -len(".tar")]), p, p.stat().st_size))
        return items

    def discard(self, item: Spooled) -> None:
        """Delete a spooled upload (published, failed, or a duplicate)."""
        with contextlib.suppress(FileNotFoundError):
            item.path.unlink()

    def files(self) -> list[Path]:
        """Everything in the spool (for tests and diagnostics)."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())
