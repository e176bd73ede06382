"""Input policy: which member names, types, modes and links are accepted, sanitised or refused.

Refused (InputError naming the member): ``..`` components, absolute names, NUL bytes, names that
are not UTF-8, components over 255 bytes, paths over 4096 bytes or deeper than the depth limit,
relative symlinks that climb out of the ingested tree, empty symlink targets, and (elsewhere)
devices, FIFOs, sockets, sparse files and hard links to anything but an earlier regular file.

Sanitised (safe, documented in docs/input-policy.md): ``./`` prefixes, repeated or trailing
slashes and ``.`` components are dropped; setuid, setgid and sticky bits are cleared.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcds.errors import InputError

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
SANITISED_MODE_BITS = 0o7000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep hostile inputs from exhausting the server."""

    max_bytes: int = 64 << 30
    """Total uncompressed bytes (tar stream or directory content)."""
    max_members: int = 2_000_000
    max_depth: int = 256


def _plain(raw: str, limits: Limits) -> bool:
    """True if ``raw`` is already normalised and within every limit (the common case, fast)."""
    return (
        0 < len(raw) <= MAX_COMPONENT_BYTES
        and raw.isascii()
        and raw[0] not in "/."
        and raw[-1] != "/"
        and "//" not in raw
        and "/." not in raw  # no '.' or '..' component (nor any name starting with '.': slow path)
        and "\0" not in raw
        and raw.count("/") < limits.max_depth
    )


def normalise_name(raw: str, limits: Limits) -> str:
    """Turn a member name into a normalised relative path, or raise InputError."""
    if _plain(raw, limits):
        return raw
    shown = raw.replace("\0", "\\0")
    if "\0" in raw:
        raise InputError(f"member {shown!r}: names must not contain NUL bytes", shown)
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"member {shown!r}: names must be valid UTF-8", shown) from None
    if raw.startswith("/"):
        raise InputError(
            f"member {raw!r}: absolute names are not allowed; create the tar with relative paths", raw
        )
    parts = [p for p in raw.split("/") if p and p != "."]
    if ".." in parts:
        raise InputError(f"member {raw!r}: '..' components are not allowed", raw)
    if len(encoded) > MAX_PATH_BYTES:
        raise InputError(f"member {raw[:80]!r}...: path longer than {MAX_PATH_BYTES} bytes", raw)
    if len(parts) > limits.max_depth:
        raise InputError(f"member {raw[:80]!r}...: nested deeper than {limits.max_depth} levels", raw)
    for p in parts:
        if len(p.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise InputError(f"member {raw[:80]!r}...: a name component is longer than 255 bytes", raw)
    return "/".join(parts)


def sanitise_mode(mode: int) -> int:
    """Permission bits with setuid, setgid and sticky cleared."""
    return mode & 0o777 & ~SANITISED_MODE_BITS


def check_symlink(member_path: str, target: str) -> None:
    """Refuse empty or NUL-containing targets and relative targets that leave the tree."""
    if not target:
        raise InputError(f"member {member_path!r}: symlink with an empty target", member_path)
    if "\0" in target:
        raise InputError(f"member {member_path!r}: symlink target contains a NUL byte", member_path)
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"member {member_path!r}: symlink target is not UTF-8", member_path) from None
    if target.startswith("/"):
        return  # absolute targets resolve on the reader's machine, as in any CernVM-FS repository
    depth = len([p for p in member_path.split("/") if p]) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise InputError(
                    f"member {member_path!r}: symlink target {target!r} points outside the published tree",
                    member_path,
                )
        elif part and part != ".":
            depth += 1
