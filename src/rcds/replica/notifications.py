"""A stratum 1 and revision notifications: pull when the upstream announces, announce when pulled.

:class:`ReplicaNotifications` subscribes to the upstream's brokers (``[notify] subscribe``) for
every replicated repository and turns each message into a pull trigger
(:meth:`rcds.replica.runner.ReplicaRunner.notify`: a hint, checked only for being newer; the pull
verifies everything). After a pull that brought a new revision it announces the replica's own
manifest to ``[notify] announce`` brokers and to its own broker (``[notify] broker_port``), so
clients and stratum 1s further down hear of a revision only once this replica can serve it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rcds.errors import RcdsError
from rcds.net.notify_post import LocalSink, NotifySender
from rcds.net.notify_stream import Subscription
from rcds.replica.runner import PullTrigger
from rcds.replica.snapshot import SnapshotResult

log = logging.getLogger("rcds.replica")


class ReplicaNotifications:
    """Subscriptions feeding a :class:`PullTrigger`, and a sender announcing pulled revisions.

    ``replicas`` maps each repository to its replica directory (where the pulled manifest is read
    from); ``local`` sinks receive announcements synchronously (an in-process broker).
    """

    def __init__(
        self,
        trigger: PullTrigger,
        replicas: Mapping[str, Path],
        subscribe: Sequence[str] = (),
        announce: Sequence[str] = (),
        local: Sequence[LocalSink] = (),
        subscription: Callable[[str, str], Subscription] = Subscription,
    ) -> None:
        self.trigger = trigger
        self.replicas = dict(replicas)
        self.subscriptions = [subscription(server, name) for server in subscribe for name in self.replicas]
        self.sender = NotifySender(announce, local)
        self._threads: list[threading.Thread] = []

    def start(self) -> ReplicaNotifications:
        """Start one thread per subscription."""
        for sub in self.subscriptions:
            t = threading.Thread(
                target=self._follow, args=(sub,), name=f"rcds-replica-notify-{sub.repository}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def _follow(self, sub: Subscription) -> None:
        for activity in sub:  # ends when the subscription is closed
            if activity.repository != sub.repository:
                continue
            if self.trigger.notify(activity.repository, activity.manifest):
                log.info("%s: announced by %s, pulling now", activity.repository, sub.server)

    def pulled(self, fqrn: str, result: SnapshotResult | RcdsError) -> None:
        """Announce the replica's manifest after a pull that fetched anything (a runner's ``on_result``)."""
        if not self.sender.enabled or not isinstance(result, SnapshotResult):
            return
        if result.catalogs_fetched == 0 and result.objects_fetched == 0:
            return  # nothing new: the revision was announced when it was first pulled
        where = self.replicas.get(fqrn)
        if where is None:
            return
        try:
            manifest = (where / ".cvmfspublished").read_bytes()
        except OSError as exc:
            log.warning("%s: cannot announce the pulled revision: %s", fqrn, exc.strerror or exc)
            return
        self.sender.announce(manifest)

    def close(self) -> None:
        """Close the subscriptions and the sender (pending announcements get a short grace)."""
        for sub in self.subscriptions:
            sub.close()
        for t in self._threads:
            t.join(5)
        self.sender.close()
