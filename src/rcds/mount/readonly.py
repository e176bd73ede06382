"""What every handler shares: turning rcds errors into FUSE error numbers, refusing writes."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from rcds.errors import FuseReplyError, NotFoundError, RcdsError
from rcds.mount.fuse.session import Request
from rcds.mount.repomount import RepoMount, StaleError

log = logging.getLogger("rcds.mount")

T = TypeVar("T")


def refuse(req: Request) -> NoReturn:
    """A request that would change the file system: ``EROFS``."""
    raise FuseReplyError(errno.EROFS)


def guarded(mount: RepoMount | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with rcds errors as FUSE errors: a vanished inode ``ESTALE``, a missing
    entry ``ENOENT``, anything else that failed ``EIO`` (logged, counted on ``mount``)."""
    try:
        return fn(*args)
    except FuseReplyError:
        raise
    except StaleError:
        raise FuseReplyError(errno.ESTALE) from None
    except NotFoundError:
        raise FuseReplyError(errno.ENOENT) from None
    except (RcdsError, OSError) as exc:
        log.warning("%s", exc)
        if mount is not None:
            mount.io_errors += 1
            mount.last_io_error = time.time()
        raise FuseReplyError(errno.EIO) from None
