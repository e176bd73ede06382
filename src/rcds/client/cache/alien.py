"""The alien cache: a shared, untrusted object directory on site storage, used by many nodes.

Layout: the ``00..ff/``, ``txn/``, ``quarantaine/`` skeleton of the local cache (directories
0770, files 0660, so one group can share it), no database and no quota (it only grows; the site
cleans it). Objects are named like repository objects, ``ab/<38 hex><algo id><suffix>``.

Unlike stock (which stores decompressed files there), rcds keeps the *raw stored* bytes of each
object, because the directory is writable by others and therefore not trusted: every read is
re-verified against the content hash (:func:`rcds.format.compression.verify_object`), and an entry
that fails is treated as a miss and removed. So do not point rcds at a stock alien cache directory.

Writes go to a unique temp file in ``txn/`` and are published with an atomic rename; a file is
never modified in place. Objects may vanish at any time (external cleanup): that is a miss.
No fsync is needed: a file truncated by a crash fails verification and is treated as a miss.
(Stock's NFS link-based rename workaround is not implemented.)
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from rcds.client.cache.local import clean_txn, make_temp, object_name
from rcds.client.cache.quota import SUBDIRS
from rcds.errors import IntegrityError, StorageError
from rcds.format.compression import verify_object
from rcds.format.hashes import ContentHash, ObjectKind

DIR_MODE = 0o770
FILE_MODE = 0o660


class AlienCache:
    """A shared directory of raw stored objects, verified on every read."""

    def __init__(self, directory: Path, *, stale_txn_age: float = 3600.0) -> None:
        self.dir = Path(directory)
        self.txn = self.dir / "txn"
        self._ensure_skeleton()
        with suppress(OSError):  # other nodes' writers: only age tells us they are gone
            clean_txn(self.txn, stale_txn_age, check_pid=False)

    def _ensure_skeleton(self) -> None:
        try:
            self._mkdir(self.dir)
            for sub in (*SUBDIRS, "txn", "quarantaine"):
                self._mkdir(self.dir / sub)
        except OSError as exc:
            raise StorageError(
                f"cannot create alien cache directory {self.dir}: {exc.strerror or exc}"
            ) from exc

    @staticmethod
    def _mkdir(path: Path) -> None:
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            return
        with suppress(OSError):  # mkdir's mode is reduced by the umask
            os.chmod(path, DIR_MODE)

    def path_of(self, h: ContentHash, kind: ObjectKind) -> Path:
        """Where the object would be (it may be absent, or vanish at any time)."""
        return self.dir / object_name(h, kind)

    def contains(self, h: ContentHash, kind: ObjectKind) -> bool:
        """True if a file is present under the object's name (not verified)."""
        return self.path_of(h, kind).is_file()

    def get_verified(
        self, h: ContentHash, kind: ObjectKind, size: int | None = None, *, compressed: bool = True
    ) -> bytes | None:
        """The object's verified, decompressed content, or ``None`` on a miss.

        ``size`` is the expected plain size, when known; ``compressed`` is false for objects stored
        uncompressed. A corrupt entry is removed (if it is still the file that was read) and is a miss.
        """
        path = self.path_of(h, kind)
        try:
            with open(path, "rb") as f:
                raw = f.read()
                st = os.fstat(f.fileno())
        except OSError:  # vanished, unreadable, I/O error on the shared storage: a miss
            return None
        try:
            return verify_object(raw, h, compressed=compressed, size=size, what=f"alien cache object {path}")
        except IntegrityError:
            with suppress(OSError):
                cur = os.stat(path)
                if (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):  # not replaced meanwhile
                    os.unlink(path)
            return None

    def put_raw(self, h: ContentHash, kind: ObjectKind, raw: bytes, *, verify: bool = True) -> Path:
        """Publish an object's raw stored bytes (checked against ``h`` unless ``verify`` is false).

        Does nothing if the object is already present. Raises :class:`IntegrityError` for bytes
        that do not match ``h``, :class:`StorageError` if the shared storage fails; callers
        usually treat the latter as non-fatal.
        """
        if verify and (found := ContentHash.of(raw, h.algorithm)) != h:
            raise IntegrityError(
                f"refusing to put {found.hex} into the alien cache under {h.hex}", object_name(h, kind)
            )
        path = self.path_of(h, kind)
        if path.is_file():
            return path
        for attempt in (1, 2):
            tmp: Path | None = None
            try:
                fd, tmp = make_temp(self.txn, FILE_MODE)
                with os.fdopen(fd, "wb") as f:
                    f.write(raw)
                os.replace(tmp, path)
                return path
            except FileNotFoundError:  # the skeleton was removed under us: recreate it, once
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                if attempt == 2:
                    raise StorageError(f"alien cache {self.dir} keeps vanishing while writing") from None
                self._ensure_skeleton()
            except OSError as exc:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                raise StorageError(
                    f"cannot write {object_name(h, kind)} into alien cache {self.dir}: {exc}"
                ) from exc
        raise AssertionError("unreachable")
