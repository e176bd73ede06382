"""The resume state of ``rcds get``: which files of a destination are complete, with what content.

The state of a destination lives in the local cache directory (``<cache>/get-state/<hash of
the destination's real path>.json``), never in the copied tree: a finished copy holds exactly
the repository's entries (a repository may hold a file of any name), and a destination whose
parent is read-only needs nothing written beside it. It is kept after a complete copy, so that
``rcds get`` into the same destination later (a new revision) skips the files already current;
states unused for :data:`STATE_MAX_AGE` are removed when another is made. Only files recorded
here (after they are complete) are skipped on a resume: a file cut short by a crash is written
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from contextlib import suppress
from pathlib import Path

from rcds.errors import StorageError

__all__ = ["LEGACY_STATE_FILE", "STATE_DIR", "STATE_MAX_AGE", "GetState", "state_path"]

STATE_DIR = "get-state"
"""The directory of the resume states, in the local cache directory."""
LEGACY_STATE_FILE = ".rcds-get.json"
"""Where older versions kept the resume state: in the destination (read once, then removed)."""
STATE_VERSION = 2
STATE_MAX_AGE = 30 * 86400.0
"""Seconds after which an unused resume state is removed (when another one is written)."""


def state_path(cache_dir: Path, target: Path) -> Path:
    """Where the resume state of a copy into ``target`` lives (see the module docstring)."""
    real = os.path.realpath(target).encode("utf-8", "surrogateescape")
    return Path(cache_dir) / STATE_DIR / f"{hashlib.sha256(real).hexdigest()[:40]}.json"


class GetState:
    """The resume records of one destination: relative path -> content key. Thread safe.

    ``path`` is the state file (``None``: nothing is recorded), ``target`` the destination it
    describes (checked on reading: a state names its destination). ``legacy``, if given, is a
    state file of an older version, read when ``path`` has none: :meth:`drop_legacy` removes it.

    The file is a log, so that saving costs what is new, not the whole state: a JSON header
    line (``version``, ``fqrn``, ``target``), then per save one line, a JSON list of the
    ``[path, key]`` pairs completed since the last, appended in one write (a later pair for a
    path wins). The first save of a copy writes it whole (temp file and rename: compacted); a
    line cut short by a crash is ignored when reading.
    """

    def __init__(
        self, path: Path | None, fqrn: str, target: Path | None = None, legacy: Path | None = None
    ) -> None:
        self.path = path
        self.fqrn = fqrn
        self.target = os.path.realpath(target) if target is not None else ""
        self.done: dict[str, str] = {}
        self.legacy: Path | None = None
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._new: list[tuple[str, str]] = []
        self._saved = False
        if path is None:
            return
        if not self._load(path) and legacy is not None and self._load_legacy(legacy):
            self.legacy = legacy

    def _header(self) -> dict[str, object]:
        return {"version": STATE_VERSION, "fqrn": self.fqrn, "target": self.target}

    def _load(self, path: Path) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                head = json.loads(f.readline())
                if not isinstance(head, dict) or any(head.get(k) != v for k, v in self._header().items()):
                    return False
                done = self.done
                for line in f:
                    try:
                        records = json.loads(line)
                    except ValueError:  # cut short by a crash (the last line)
                        continue
                    for rel, key in records:
                        done[str(rel)] = str(key)
        except (OSError, ValueError, UnicodeDecodeError, TypeError):
            self.done = {}
            return False
        return True

    def _load_legacy(self, path: Path) -> bool:
        """The single JSON object of older versions (``version`` 1, in the destination)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        if not isinstance(data, dict) or data.get("version") != 1 or data.get("fqrn") != self.fqrn:
            return False
        files = data.get("files", {})
        if not isinstance(files, dict):
            return False
        self.done = {str(k): str(v) for k, v in files.items()}
        return True

    def record(self, rel: str, key: str) -> None:
        """Remember that ``rel`` was written with content ``key``."""
        with self._lock:
            self.done[rel] = key
            self._new.append((rel, key))

    def record_many(self, records: list[tuple[str, str]]) -> None:
        """:meth:`record` for many ``(rel, key)`` pairs at once."""
        with self._lock:
            self.done.update(records)
            self._new += records

    def save(self, revision: int) -> None:
        """Write what was recorded since the last save (the whole state at the first save).

        ``revision`` is the revision copied (noted in the header of a file written whole).
        """
        if self.path is None:
            return
        with self._save_lock:
            with self._lock:
                if self._saved and not self._new:
                    return
                lines = self._new if self._saved else list(self.done.items())  # first: all, compacted
                self._new = []
            text = json.dumps(lines) + "\n" if lines else ""
            try:
                if self._saved:
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write(text)
                    return
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():  # a new state: prune the old ones
                    _prune(self.path.parent)
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write(json.dumps({**self._header(), "revision": revision}) + "\n" + text)
                    os.replace(tmp, self.path)
                except BaseException:
                    with suppress(OSError):
                        tmp.unlink()
                    raise
                self._saved = True
            except OSError as exc:
                raise StorageError(
                    f"cannot write the resume state {self.path}: {exc.strerror or exc}; "
                    "check that the cache directory is writable (--cache)"
                ) from exc

    def drop_legacy(self) -> None:
        """Remove the older version's state file read at the start (once its records are saved)."""
        legacy, self.legacy = self.legacy, None
        if legacy is not None:
            with suppress(OSError):
                legacy.unlink()


def _prune(directory: Path, max_age: float = STATE_MAX_AGE) -> None:
    """Remove the resume states in ``directory`` unused for ``max_age`` seconds."""
    old = time.time() - max_age
    with suppress(OSError), os.scandir(directory) as it:
        for e in it:
            with suppress(OSError):
                if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < old:
                    os.unlink(e.path)
