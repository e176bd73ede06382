"""Following a broker's revision notifications (``CVMFS_NOTIFICATION_SERVER``) for an open repository.

A notification carries the whole signed manifest of a new revision. :class:`NotificationFollower`
subscribes (reconnecting with back-off, :mod:`rcds.net.notify_stream`) and hands every message to
:meth:`Repository.apply_manifest <rcds.client.repository.Repository.apply_manifest>`, which
verifies it like a downloaded manifest (whitelist, certificate, signature, no rollback) and
switches only to a newer revision. Forged, foreign or older manifests change nothing; the TTL
polling of the repository stays in place as the fallback when the broker is away.

The FUSE mount or any other holder of a :class:`~rcds.client.repository.Repository` starts one
follower per repository; ``on_switch(revision)`` tells it when to drop kernel caches. Code that has
no repository object (a replica) uses :class:`rcds.net.notify_stream.Subscription` directly and
verifies in its own pull.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcds.errors import RcdsError
from rcds.net.notify_stream import Subscription

if TYPE_CHECKING:
    from rcds.client.config.settings import ClientConfig
    from rcds.client.repository import Repository

log = logging.getLogger("rcds.client.notifications")

CONFIG_KEY = "CVMFS_NOTIFICATION_SERVER"


def notification_server(config: ClientConfig) -> str | None:
    """The configured broker base URL (``CVMFS_NOTIFICATION_SERVER``), or None."""
    value = (config.get(CONFIG_KEY) or "").strip()
    return value or None


class NotificationFollower:
    """Applies verified newer manifests pushed by a broker to ``repo`` from a background thread."""

    def __init__(
        self,
        repo: Repository,
        server: str,
        *,
        on_switch: Callable[[int], None] | None = None,
        **subscription: float,
    ) -> None:
        self.repo = repo
        self.on_switch = on_switch
        self.subscription = Subscription(server, repo.fqrn, **subscription)  # type: ignore[arg-type]
        self.received = 0
        self.switched = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"rcds-follow-{repo.fqrn}", daemon=True)

    def start(self) -> NotificationFollower:
        """Start following; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        for activity in self.subscription:
            self.received += 1
            try:
                switched = self.repo.apply_manifest(activity.manifest)
            except RcdsError as exc:  # forged, stale, or the trust chain unreachable: keep the revision
                self.rejected += 1
                self.last_error = str(exc)
                log.warning("notification for %s not applied: %s", self.repo.fqrn, exc)
                switched = False
            if switched:
                self.switched += 1
                if self.on_switch is not None:
                    try:
                        self.on_switch(self.repo.revision)
                    except Exception:
                        log.exception("on_switch callback of %s failed", self.repo.fqrn)
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every message; True if it did in time."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def stop(self) -> None:
        """Stop following (the repository stays open)."""
        self.subscription.close()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> NotificationFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
