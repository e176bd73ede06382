"""A file re-read when it changes, for the grid-mapfile and token issuer keys."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from rcds.errors import ConfigError, RcdsError

__all__ = ["WatchedFile"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    """The parsed contents of a file, re-parsed when its mtime, size, inode or ctime change.

    The file is stat'ed on each :meth:`get`, at most every ``min_interval`` seconds.  A first
    load that fails raises :class:`ConfigError`; a later failure (file missing or unreadable,
    ``parse`` raising :class:`ValueError` or :class:`RcdsError`) is logged and the previous
    contents are kept, as today's server does.
    """

    def __init__(
        self,
        path: str | Path,
        parse: Callable[[bytes], T],
        *,
        what: str = "file",
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._what = what
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded = False
        self._signature: tuple[int, int, int, int] | None = None
        self._checked = 0.0
        self._error: str | None = None
        self.get()

    def get(self) -> T:
        """The current contents, re-read first if the file changed."""
        with self._lock:
            now = self._clock()
            if self._loaded and now - self._checked < self._min_interval:
                return self._current()
            self._checked = now
            try:
                st = os.stat(self.path)
                signature = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
                if signature != self._signature:
                    # Set first: a broken file is parsed (and logged) once per change, not per call.
                    self._signature = signature
                    value = self._parse(self.path.read_bytes())
                    self._value, self._loaded, self._error = value, True, None
                    log.info("loaded %s %s", self._what, self.path)
            except (OSError, ValueError, RcdsError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                if not self._loaded:
                    self._signature = None
                    raise ConfigError(f"{self.path}: cannot load {self._what}: {reason}") from e
                if reason != self._error:
                    self._error = reason
                    log.error(
                        "%s %s: cannot reload, keeping the previous contents: %s",
                        self._what,
                        self.path,
                        reason,
                    )
            return self._current()

    def _current(self) -> T:
        assert self._loaded
        return self._value  # type: ignore[return-value]
