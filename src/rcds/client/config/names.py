"""Repository names as the client accepts them (stock's: dot-separated labels of letters, digits,
``_`` and ``-``); a name becomes part of cache file paths, so nothing else gets through."""

from __future__ import annotations

import re

from rcds.errors import ConfigError

_FQRN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*")


def check_fqrn(fqrn: str) -> str:
    """Return ``fqrn`` if it is a well-formed repository name (it becomes part of file paths)."""
    if not _FQRN.fullmatch(fqrn) or len(fqrn) > 253:
        raise ConfigError(f"{fqrn!r} is not a repository name; expected labels like 'sw.example.org'")
    return fqrn
