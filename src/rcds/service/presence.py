"""Which CIDs are published where: an index per repository tree, rebuilt when its revision changes.

``exists`` answers from memory; a background refresh (and every own publish) keeps the index
current. Repositories are searched in configuration order: own ones first, then replicas.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rcds.errors import RcdsError
from rcds.service.repo_reader import Published, Tree, cid_mounts, published
from rcds.storage.base import Store

log = logging.getLogger("rcds.service.presence")


@dataclass
class RepoIndex:
    """The CIDs of one repository tree at one revision."""

    name: str
    public: Tree
    own: bool
    revision: Published | None = None
    cids: dict[str, str] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    """CIDs published here after the indexed revision (CID -> revision), kept until indexed."""
    size: int = 0
    """Bytes of the files of the indexed revision (its root catalog's counters)."""
    newest: int = 0
    """The newest revision known: indexed or just published."""


@dataclass(frozen=True)
class RepoSummary:
    """What the status page shows of a repository, read from memory."""

    name: str
    own: bool
    revision: int
    published_at: int
    """When the newest known revision was signed (0: never published)."""
    cids: int
    size: int


class Presence:
    """Thread-safe CID lookup over several repository trees."""

    def __init__(self, prefix: str, max_depth: int = 2) -> None:
        self.prefix = prefix
        self.max_depth = max_depth
        self._repos: dict[str, RepoIndex] = {}
        self._lock = threading.Lock()

    def add_repository(self, name: str, public: Tree, *, own: bool) -> None:
        """Track a repository tree (own stratum 0 or a replica)."""
        with self._lock:
            self._repos.setdefault(
                name, RepoIndex(name, public if isinstance(public, Store) else Path(public), own)
            )

    def names(self) -> list[str]:
        """Tracked repositories in search order."""
        with self._lock:
            return list(self._repos)

    def refresh(self, name: str | None = None) -> None:
        """Re-read repositories whose revision changed (all, or just ``name``)."""
        with self._lock:
            targets = [self._repos[name]] if name else list(self._repos.values())
        for idx in targets:
            try:
                rev = published(idx.public)
                if rev is None or (idx.revision is not None and rev.root == idx.revision.root):
                    continue
                totals: dict[str, int] = {}
                cids = cid_mounts(idx.public, rev, self.prefix, self.max_depth, totals)
                size = totals.get("file_size", 0)
            except RcdsError as exc:
                log.warning("cannot index %s: %s", idx.name, exc)
                continue
            with self._lock:
                if idx.revision is not None and idx.revision.revision > rev.revision:
                    continue  # a concurrent refresh installed a newer revision
                idx.added = {c: r for c, r in idx.added.items() if r > rev.revision}
                idx.revision, idx.cids, idx.size = rev, cids, size
                idx.newest = max([rev.revision, *idx.added.values()])
                for c in idx.added:
                    idx.cids[c] = f"/{self.prefix}/{c}"

    def add(self, name: str, cid: str, revision: int) -> None:
        """Record a CID just published into an own repository as ``revision`` (before it is indexed)."""
        with self._lock:
            idx = self._repos[name]
            idx.added[cid] = revision
            idx.newest = max(idx.newest, revision)
            idx.cids[cid] = f"/{self.prefix}/{cid}"

    def where(self, cid: str) -> str | None:
        """The first repository holding ``cid``."""
        with self._lock:
            for idx in self._repos.values():
                if cid in idx.cids:
                    return idx.name
        return None

    def summaries(self) -> list[RepoSummary]:
        """Revision, publish time, CID count and size of every repository (no disk access)."""
        with self._lock:
            out = []
            for idx in self._repos.values():
                rev = idx.revision
                out.append(
                    RepoSummary(
                        idx.name,
                        idx.own,
                        idx.newest,
                        rev.timestamp if rev else 0,
                        len(idx.cids),
                        idx.size,
                    )
                )
            return out

    def count(self, name: str) -> int:
        """How many CIDs one repository holds."""
        with self._lock:
            return len(self._repos[name].cids)

    def cids_of(self, name: str) -> set[str]:
        """Every CID in one repository."""
        with self._lock:
            return set(self._repos[name].cids)

    def index(self, name: str) -> RepoIndex:
        """The index record of a repository."""
        with self._lock:
            return self._repos[name]
