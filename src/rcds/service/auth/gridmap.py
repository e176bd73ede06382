"""The grid-mapfile: which certificate DNs may use the service, and their account names.

Format (Globus): one entry a line, ``"<DN>" account[,account...]``; the DN in the one-line
slash form, in double quotes when it contains spaces (``\\"`` and ``\\\\`` escape a quote and
a backslash inside the quotes; other backslash sequences such as OpenSSL's ``\\xC3`` are kept
as they are); ``#`` starts a comment line.  A DN without an account is accepted as a known DN
with no account.

DNs are compared after :func:`normalize_dn`, which makes the ``Email``/``E``/``emailAddress``
and ``USERID``/``UID`` spellings and OpenSSL 3's escaping of ``/`` and ``+`` in values
compare equal.  :class:`GridMap` re-reads the file when it changes, so removing a DN from the
file revokes it without a restart.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from rcds.service.auth._watch import WatchedFile

__all__ = ["GridMap", "normalize_dn", "parse_gridmap"]

log = logging.getLogger(__name__)

_EMAIL_RE = re.compile(r"/(?:E|Email|emailAddress)=", re.IGNORECASE)
_UID_RE = re.compile(r"/(?:USERID|UID)=", re.IGNORECASE)


def normalize_dn(dn: str) -> str:
    """The form in which DNs are compared (see the module docstring)."""
    dn = dn.strip().replace("\\/", "/").replace("\\+", "+")
    return _UID_RE.sub("/UID=", _EMAIL_RE.sub("/emailAddress=", dn))


def _parse_line(line: str) -> tuple[str, tuple[str, ...]] | None:
    """(DN, accounts) of one non-comment line, or None if it is malformed."""
    if line.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(line):
            ch = line[i]
            if ch == "\\" and i + 1 < len(line):
                nxt = line[i + 1]
                chars.append(nxt if nxt in '"\\' else ch + nxt)
                i += 2
                continue
            if ch == '"':
                break
            chars.append(ch)
            i += 1
        else:
            return None  # no closing quote
        dn, rest = "".join(chars), line[i + 1 :]
        if rest and not rest[0].isspace():
            return None
    else:
        dn, _, rest = line.partition(" ")
        if "\t" in dn:
            dn, _, more = dn.partition("\t")
            rest = more + " " + rest
    if not dn.startswith("/"):
        return None
    accounts = tuple(a.strip() for a in rest.split(",") if a.strip())
    if any(any(c.isspace() for c in a) for a in accounts):
        return None
    return dn, accounts


def parse_gridmap(text: str, source: str = "grid-mapfile") -> Mapping[str, tuple[str, ...]]:
    """Map each normalized DN of a grid-mapfile to its accounts (first one = default).

    Malformed lines are logged and skipped; the accounts of a DN listed twice are merged.
    """
    result: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line)
        if entry is None:
            log.warning("%s:%d: skipping malformed grid-mapfile line", source, lineno)
            continue
        dn, accounts = entry
        merged = result.setdefault(normalize_dn(dn), [])
        merged.extend(a for a in accounts if a not in merged)
    return MappingProxyType({dn: tuple(accounts) for dn, accounts in result.items()})


class GridMap:
    """A grid-mapfile, re-read whenever it changes (checked at most every ``min_interval`` s).

    Raises :class:`~rcds.errors.ConfigError` if the file cannot be read at first; later read
    failures keep the previous contents.
    """

    def __init__(
        self, path: str | Path, *, min_interval: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._file = WatchedFile(
            self.path,
            lambda data: parse_gridmap(data.decode("utf-8", errors="replace"), str(self.path)),
            what="grid-mapfile",
            min_interval=min_interval,
            clock=clock,
        )

    @property
    def entries(self) -> Mapping[str, tuple[str, ...]]:
        """The current mapping of normalized DN to accounts."""
        return self._file.get()

    def accounts(self, dn: str) -> tuple[str, ...] | None:
        """The accounts of ``dn`` (possibly empty), or None if the DN is not in the file."""
        return self.entries.get(normalize_dn(dn))

    def account(self, dn: str) -> str | None:
        """The default (first) account of ``dn``, or None if it has none or is not listed."""
        accounts = self.accounts(dn)
        return accounts[0] if accounts else None

    def __contains__(self, dn: object) -> bool:
        return isinstance(dn, str) and self.accounts(dn) is not None
