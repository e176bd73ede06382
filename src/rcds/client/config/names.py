"""Repository names as the client accepts them (:mod:`rcds.format.names`: dot-separated labels
of letters, digits, ``_`` and ``-``); a name becomes part of cache file paths, so nothing else
gets through."""

from __future__ import annotations

from rcds.errors import ConfigError
from rcds.format.names import is_repository_name


def check_fqrn(fqrn: str) -> str:
    """Return ``fqrn`` if it is a well-formed repository name (it becomes part of file paths)."""
    if not is_repository_name(fqrn, qualified=False):
        raise ConfigError(f"{fqrn!r} is not a repository name; expected labels like 'sw.example.org'")
    return fqrn
