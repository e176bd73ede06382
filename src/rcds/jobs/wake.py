"""Waking ``rcds wait`` when a repository announces a new revision, instead of sleeping out a poll.

One :class:`~rcds.net.notify_stream.Subscription` per repository keeps the newest pushed manifest
(unverified: the waiter hands it to :meth:`Repository.apply_manifest
<rcds.client.repository.Repository.apply_manifest>`, which verifies it) and sets an event.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from rcds.net.notify_stream import Subscription


class Waker:
    """Subscriptions to ``server`` for ``repos``; :meth:`wait` returns early on a notification."""

    def __init__(self, server: str, repos: Sequence[str]) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._pushed: dict[str, bytes] = {}
        self._subs = [Subscription(server, r) for r in repos]
        self._threads = [
            threading.Thread(target=self._follow, args=(s,), name=f"rcds-wake-{s.repository}", daemon=True)
            for s in self._subs
        ]
        for t in self._threads:
            t.start()

    def _follow(self, sub: Subscription) -> None:
        for activity in sub:
            with self._lock:
                self._pushed[activity.repository] = activity.manifest
            self._event.set()

    def take(self, repo: str) -> bytes | None:
        """The newest manifest pushed for ``repo`` since the last call, if any."""
        with self._lock:
            return self._pushed.pop(repo, None)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a notification came (then it returns at once)."""
        woke = self._event.wait(seconds)
        self._event.clear()
        return woke

    def close(self) -> None:
        """End the subscriptions."""
        for s in self._subs:
            s.close()
        for t in self._threads:
            t.join(10)
