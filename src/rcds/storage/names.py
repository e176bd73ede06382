"""Strict names for what a repository store holds: root files and content-addressed objects."""

from __future__ import annotations

import re

from rcds.errors import InputError

ROOT_FILES = frozenset(
    {
        ".cvmfspublished",
        ".cvmfswhitelist",
        ".cvmfswhitelist.pkcs7",
        ".cvmfs_master_replica",
        ".cvmfsreflog",
        ".cvmfs_last_snapshot",
        ".cvmfs_is_snapshotting",
        ".cvmfs_status.json",
    }
)
_OBJECT = re.compile(r"data/[0-9a-f]{2}/[0-9a-f]{38}(?:-rmd160|-shake128)?[PCHXM]?")


def is_object_name(name: str) -> bool:
    """True for ``data/xx/<38 hex>[-algo][suffix]``."""
    return _OBJECT.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it is a root file or object name, else raise InputError."""
    if name in ROOT_FILES or is_object_name(name):
        return name
    raise InputError(f"{name!r} is not a repository file name (a .cvmfs* root file or data/xx/<hash>)")
