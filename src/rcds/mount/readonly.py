"""What every handler shares: error handling, attribute conversion, refusing writes (EROFS)."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

log = logging.getLogger("rcds.mount")

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def handler(fn: H) -> H:
    """Wrap a request handler: an unexpected exception is logged and answered with EIO (pyfuse3
    would otherwise end the main loop, and with it the mount)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def entry_attributes(st: os.stat_result, timeout: float) -> pyfuse3.EntryAttributes:
    """pyfuse3 attributes of a stat result, cached by the kernel for ``timeout`` seconds."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = st.st_ino
    a.generation = 0
    a.entry_timeout = timeout
    a.attr_timeout = timeout
    a.st_mode = st.st_mode
    a.st_nlink = st.st_nlink
    a.st_uid = st.st_uid
    a.st_gid = st.st_gid
    a.st_rdev = 0
    a.st_size = st.st_size
    a.st_blksize = st.st_blksize
    a.st_blocks = st.st_blocks
    a.st_atime_ns = st.st_atime_ns
    a.st_mtime_ns = st.st_mtime_ns
    a.st_ctime_ns = st.st_ctime_ns
    return a


class ReadOnlyOperations(pyfuse3.Operations):
    """pyfuse3 operations that refuse every change with ``EROFS``."""

    async def setattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> pyfuse3.EntryAttributes:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> pyfuse3.EntryAttributes:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> None:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: Any) -> None:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> pyfuse3.EntryAttributes:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, *args: Any) -> int:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, *args: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: Any) -> None:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: Any) -> None:
        """Refused: EROFS."""
        raise pyfuse3.FUSEError(errno.EROFS)
