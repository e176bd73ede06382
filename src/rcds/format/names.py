"""What a repository name is: the one definition every layer checks names against.

A repository name, e.g. ``sw.example.org``: labels joined by dots; a label is 1 to 63 letters,
digits, ``_`` and ``-``, starting and ending with a letter or a digit; 253 characters at most.
A name becomes a directory name, part of cache file paths and of URLs (``/cvmfs/<name>/...``),
so nothing else gets through (no ``/``, no ``..``, no spaces). A fully qualified name (fqrn) has
at least two labels: repositories published, replicated or configured in a service are; a client
also takes a bare label (stock's configuration lookup does: ``config.d/<name>.conf``, no domain),
and so do the wire formats that only carry a name (HTTP paths, notifications).

New repositories are further limited to lowercase letters, digits and ``-`` in their labels
(:func:`is_new_repository_name`): DNS-safe, as a site may put the name in a host name.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LENGTH", "PATTERN", "TOKEN", "is_new_repository_name", "is_repository_name"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
PATTERN = rf"{_LABEL}(?:\.{_LABEL})*"
"""The regular expression of a repository name (without anchors; to embed in larger ones, which
then do not check :data:`MAX_LENGTH`)."""

MAX_LENGTH = 253
"""The longest repository name, in characters."""

TOKEN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_LENGTH - 1}}}"
"""A cheap superset of :data:`PATTERN`, for taking a name apart from a URL on a hot path where
the name is then looked up among names already checked with :func:`is_repository_name` (the
servers' tables): whatever matches only this finds nothing there."""

_NAME = re.compile(PATTERN)
_NEW_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NEW_NAME = re.compile(rf"{_NEW_LABEL}(?:\.{_NEW_LABEL})+")  # qualified


def is_repository_name(name: object, *, qualified: bool = True) -> bool:
    """True if ``name`` is a string that is a repository name (see the module documentation),
    with at least one dot unless ``qualified`` is false."""
    if not isinstance(name, str) or len(name) > MAX_LENGTH or _NAME.fullmatch(name) is None:
        return False
    return not qualified or "." in name


def is_new_repository_name(name: object) -> bool:
    """True if ``name`` may name a new repository: a repository name in lowercase, without ``_``."""
    return isinstance(name, str) and len(name) <= MAX_LENGTH and _NEW_NAME.fullmatch(name) is not None
