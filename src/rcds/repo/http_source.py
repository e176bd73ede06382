"""Reading a repository over HTTP through the network layer (proxies, failover, retries)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rcds.errors import IntegrityError, NotFoundError
from rcds.net.failures import FetchError, Outcome
from rcds.net.fetcher import Fetcher
from rcds.repo.source import Source

T = TypeVar("T")


class HttpSource(Source):
    """A :class:`Source` backed by a :class:`~rcds.net.fetcher.Fetcher`.

    A bad object (hash mismatch) is re-fetched without caches and then from another host,
    because the check runs inside the fetcher's failover loop.
    """

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.location = ";".join(fetcher.servers)

    @classmethod
    def for_url(cls, url: str) -> HttpSource:
        """A direct (no proxy) source for one repository base URL."""
        return cls(Fetcher([url.rstrip("/")]))

    def root_file(self, name: str) -> bytes:
        """GET a root file (``.cvmfspublished``...)."""
        return self.fetcher.fetch(name, max_size=64 << 20)

    def fetch_checked(self, name: str, check: Callable[[bytes], T]) -> T:
        """GET an object and validate it inside the failover loop.

        As with a local store, an object missing on every server is a NotFoundError and an object
        that failed the check everywhere is an IntegrityError; other failures stay network errors.
        """
        try:
            return self.fetcher.fetch(name, validate=check)
        except FetchError as exc:
            if exc.not_found:
                raise NotFoundError(f"{name} is not on any server ({self.location})") from exc
            if exc.attempts and all(a.failure.outcome is Outcome.BAD_DATA for a in exc.attempts):
                raise IntegrityError(
                    f"{name}: every server sent bad data ({exc.attempts[-1].failure.reason})", name
                ) from exc
            raise

    def close(self) -> None:
        """Drop pooled connections."""
        self.fetcher.close()
