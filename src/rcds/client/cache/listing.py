"""Is an object in the local cache? Answered for many objects in a row, a bucket listing at a time.

``rcds get`` asks this of every object of a copy before it downloads it. A ``stat`` per object
costs a kernel path lookup each (~5 µs, ~0.1 s for 20,000 objects); a cache directory of few
objects (``ab/`` holds the objects whose hash starts with ``ab``) answers every question about
it with one listing. A directory larger than :data:`LIST_MAX_BYTES` (a cache of some 300,000
objects or more) is asked object by object instead, as listing it would cost more.

The answers are a snapshot: an object that arrives after its directory was listed counts as
absent (it is downloaded), one evicted after it counts as present (whoever copies it from the
cache finds it gone and must download it then).
"""

from __future__ import annotations

import os

__all__ = ["LIST_MAX_BYTES", "CacheListing"]

LIST_MAX_BYTES = 64 << 10
"""Cache directories up to this size (``st_size``: ~1,000 entries on ext4) are listed whole."""


_BUCKETS = [f"{i:02x}" for i in range(256)]


class CacheListing:
    """Which of the names ``ab/<rest>`` exist under the cache directory ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._buckets: dict[str, frozenset[str] | None] = {}
        """Bucket -> the names in it, or None: too large, asked one by one."""

    def __contains__(self, name: str) -> bool:
        bucket, _, rest = name.partition("/")
        try:
            names = self._buckets[bucket]
        except KeyError:
            names = self._buckets[bucket] = self._list(bucket)
        if names is not None:
            return rest in names
        try:
            os.stat(f"{self.root}/{name}")
        except OSError:
            return False
        return True

    def bucket_is_empty(self, first: int) -> bool:
        """True if the directory of the objects whose digest starts with byte ``first`` holds
        nothing (listed once): no name to format for them (an empty cache, a fresh copy)."""
        bucket = _BUCKETS[first]
        try:
            names = self._buckets[bucket]
        except KeyError:
            names = self._buckets[bucket] = self._list(bucket)
        return names is not None and not names

    def _list(self, bucket: str) -> frozenset[str] | None:
        path = f"{self.root}/{bucket}"
        try:
            if os.stat(path).st_size > LIST_MAX_BYTES:
                return None
            return frozenset(os.listdir(path))
        except FileNotFoundError:
            return frozenset()
        except OSError:
            return None  # e.g. not readable: ask object by object (and fail the same way)
