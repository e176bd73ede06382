"""What an input (tarball or directory) yields: one normalised member at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """Member types rcds accepts."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(slots=True)
class Member:
    """A normalised input member.

    ``path`` is relative to the ingest target, ``/``-separated, without ``.``/``..``/empty parts;
    ``""`` is the target directory itself. ``target`` is a symlink's target or a hard link's
    normalised member path. ``read(n)`` returns up to ``n`` bytes of a file's content.
    """

    path: str
    kind: Kind
    mode: int
    mtime: int
    size: int = 0
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtimens: int | None = None
    read: Callable[[int], bytes] | None = None

    @property
    def display(self) -> str:
        """The member's name for messages."""
        return self.path or "."
