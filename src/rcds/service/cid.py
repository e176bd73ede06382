"""Validation of CIDs, the names under which tarballs are published.

A CID names one published tarball: ``<group>/<hash>`` by client convention (jobsub uses
``<vo>/<sha256 hex>``, justIN ``dune/<sha1 hex>``), or a single ``<hash>``.  It becomes a
path (``/cvmfs/<repo>/<prefix>/<cid>``), a spool file name and an HTTP query value, so it is
checked strictly here, once, before anything else sees it.

Today's server only normalises the path, refuses a leading ``.``, the characters ``'`` and
``\\`` and more than one slash (rcds-today.md 2.3); absolute CIDs, commas, spaces and newlines
all pass and break things further on.  The rules here are a strict superset of those:

* not empty, at most ``max_length`` characters, at most ``max_depth`` components;
* only ASCII letters, digits and ``- _ . = @`` (:data:`SAFE_CHARACTERS`).  This excludes
  whitespace, control characters (NUL, DEL, C1), quotes, backslashes, non-ASCII, ``,`` (today
  it splits timestamp batches) and ``+`` (query-string decoding turns it into a space, and
  today's double decoding does so even when it is sent as ``%2B``);
* not absolute, no trailing slash, no empty components (``a//b``);
* no ``.`` or ``..`` components, and no component starting with ``.`` (hidden names such as
  ``.cvmfscatalog`` belong to cvmfs) or ``-`` (it would read as an option to a tool).

Every CID a real client produces (``<vo>/<40 or 64 hex digits>``) passes.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from rcds.errors import ConfigError, InputError

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_LENGTH", "SAFE_CHARACTERS", "Cid", "validate_cid"]

#: Characters allowed in a CID besides the ``/`` separating its components.
SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.=@")

#: Default maximum number of components (today: at most one slash).
DEFAULT_MAX_DEPTH = 2

#: Default maximum length in characters (a file name's limit on Linux).
DEFAULT_MAX_LENGTH = 255

_SHOWN = 80  # at most this many characters of a bad CID are echoed in a message


@dataclass(frozen=True, slots=True)
class Cid:
    """A validated CID.

    ``value`` is the CID string, ``components`` its ``/``-separated parts.
    """

    value: str
    components: tuple[str, ...]

    @property
    def group(self) -> str:
        """The first component: the VO group by client convention (``dune`` in ``dune/<hash>``).

        For a one-component CID this is the whole CID.
        """
        return self.components[0]

    @property
    def name(self) -> str:
        """The last component (the hash, by client convention)."""
        return self.components[-1]

    @property
    def depth(self) -> int:
        """The number of components."""
        return len(self.components)

    def __str__(self) -> str:
        return self.value


def _show(cid: str) -> str:
    """Render (part of) a bad CID safely on one line."""
    shown = cid if len(cid) <= _SHOWN else cid[:_SHOWN] + "..."
    return ascii(shown)


def _describe(ch: str) -> str:
    """Name a disallowed character for an error message."""
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        kind = "control character"
    elif ch.isspace():
        kind = "whitespace"
    elif ch in "'\"":
        kind = "quote"
    elif ch == "\\":
        kind = "backslash"
    elif code > 0x7F:
        kind = "non-ASCII character"
    else:
        return f"character {ch!r}"
    return f"{kind} U+{code:04X}"


def validate_cid(cid: str, max_depth: int = DEFAULT_MAX_DEPTH, max_length: int = DEFAULT_MAX_LENGTH) -> Cid:
    """Check ``cid`` against the rules in this module's docstring and return it as a :class:`Cid`.

    Raises :class:`~rcds.errors.InputError` with a one-line reason, suitable as the body of an
    HTTP 400 answer, when the CID is unacceptable.  Raises
    :class:`~rcds.errors.ConfigError` if ``max_depth`` or ``max_length`` is below 1.
    """
    if max_depth < 1 or max_length < 1:
        raise ConfigError(f"CID limits must be at least 1 (max_depth={max_depth}, max_length={max_length})")
    if not isinstance(cid, str):
        raise InputError(f"cid must be a string, not {type(cid).__name__}")
    if not cid:
        raise InputError("cid is empty", member=cid)
    if len(cid) > max_length:
        raise InputError(f"cid is too long: {len(cid)} characters, at most {max_length} allowed", member=cid)
    for pos, ch in enumerate(cid):
        if ch != "/" and ch not in SAFE_CHARACTERS:
            raise InputError(
                f"disallowed character in cid {_show(cid)}: {_describe(ch)} at position {pos}; "
                "allowed are ASCII letters, digits, '-', '_', '.', '=', '@' and '/' between components",
                member=cid,
            )
    if cid.startswith("/"):
        raise InputError(f"cid may not be an absolute path (start with '/'): {_show(cid)}", member=cid)
    if cid.endswith("/"):
        raise InputError(f"cid may not end with '/': {_show(cid)}", member=cid)
    components = tuple(cid.split("/"))
    for comp in components:
        if not comp:
            raise InputError(f"cid may not contain an empty component ('//'): {_show(cid)}", member=cid)
        if comp in (".", ".."):
            raise InputError(f"cid may not contain a {comp!r} component: {_show(cid)}", member=cid)
        if comp.startswith("."):
            raise InputError(f"cid components may not start with '.': {_show(cid)}", member=cid)
        if comp.startswith("-"):
            raise InputError(f"cid components may not start with '-': {_show(cid)}", member=cid)
    if len(components) > max_depth:
        if max_depth == 1:
            allowed = "no slash allowed in cid (1 component)"
        else:
            slashes = "one slash" if max_depth == 2 else f"{max_depth - 1} slashes"
            allowed = f"at most {slashes} allowed in cid ({max_depth} components)"
        raise InputError(
            f"{allowed}, got {len(components)} components: {_show(cid)}",
            member=cid,
        )
    return Cid(cid, components)
