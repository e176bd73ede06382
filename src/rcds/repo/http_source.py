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
        """GET an object and validate it inside the failover loop (errors: :func:`translate`)."""
        try:
            return self.fetcher.fetch(name, validate=check)
        except FetchError as exc:
            raise translate(name, exc) from exc

    def close(self) -> None:
        """Drop pooled connections."""
        self.fetcher.close()


def translate(name: str, exc: FetchError) -> Exception:
    """A failed object download as the caller should see it, like reading a local store.

    Missing on every server: NotFoundError; corrupt on every server: IntegrityError; anything
    else stays the network error listing every try.
    """
    if exc.not_found:
        return NotFoundError(
            f"{name} is missing on every server: the repository is damaged or garbage-collected "
            f"under this revision; try again after the next revision is published\n{exc}"
        )
    if exc.attempts and all(
        a.failure.outcome is Outcome.BAD_DATA or a.failure.reason.startswith("bad data") for a in exc.attempts
    ):
        return IntegrityError(
            f"{name}: every server sent corrupt data, nothing was used; report this to the "
            f"repository operators\n{exc}",
            name,
        )
    return exc
