"""Applying new revisions to a live mount: TTL checks, on-demand checks, kernel cache invalidation.

A thread asks each repository once a second whether its TTL expired (the client's
:meth:`~rcds.client.repository.Repository.refresh`); :meth:`RevisionKeeper.refresh` asks at once
(a notification subscriber, SIGUSR1). After a switch every inode the kernel holds is resolved
again in the new revision: names whose inode changed or vanished, and the negative entries
handed out, are invalidated in the kernel (``INVAL_ENTRY``), and directories and changed
inodes get ``INVAL_INODE`` (attributes, cached listings, pages). Files read before keep their
inode and their content (:mod:`rcds.mount.reading`).
"""

from __future__ import annotations

import logging
import threading

from rcds.errors import RcdsError
from rcds.mount.fuse import notify
from rcds.mount.fuse.session import Session
from rcds.mount.inodes import NodeTable
from rcds.mount.repomount import RepoMount
from rcds.net.notify_stream import Subscription

log = logging.getLogger("rcds.mount")


class RevisionKeeper:
    """Switches the repositories of a mount to new revisions (see the module docstring).

    ``lock`` guards ``table`` (shared with the request handlers); ``session`` receives the
    invalidations once the file system is mounted.
    """

    def __init__(self, table: NodeTable, mounts: dict[str, RepoMount], lock: threading.Lock) -> None:
        self.table = table
        self.mounts = mounts
        self.lock = lock
        self.session: Session | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forced: set[str] = set()
        self._forced_lock = threading.Lock()
        self._pushed: dict[str, bytes] = {}
        self._subscriptions: list[Subscription] = []
        self._thread: threading.Thread | None = None

    def follow(self, mount: RepoMount) -> None:
        """Subscribe to ``mount``'s notification broker (``CVMFS_NOTIFICATION_SERVER``), if any:
        each announced manifest is applied (verified) at once, not after the TTL."""
        if mount.notification_server is None:
            return
        sub = Subscription(mount.notification_server, mount.fqrn)
        self._subscriptions.append(sub)

        def run() -> None:
            for activity in sub:  # ends when the subscription is closed
                if activity.repository == mount.fqrn:
                    self.pushed(mount.fqrn, activity.manifest)

        threading.Thread(target=run, name=f"rcds-mount-notify-{mount.fqrn}", daemon=True).start()
        log.info("%s: following notifications of %s", mount.fqrn, mount.notification_server)

    def pushed(self, fqrn: str, manifest: bytes) -> None:
        """A signed manifest announced for ``fqrn``: applied by the loop at once (thread safe)."""
        self._pushed[fqrn] = manifest
        self.refresh(fqrn)

    def refresh(self, fqrn: str | None = None) -> None:
        """Ask for a revision check of ``fqrn`` (every repository if None) now, e.g. after a
        notification. Thread safe, returns at once; the switch happens in the loop's thread."""
        with self._forced_lock:
            self._forced.update([fqrn] if fqrn else list(self.mounts))
        self._wake.set()

    def start(self, interval: float = 1.0) -> None:
        """Start checking every ``interval`` seconds on a thread of its own."""
        self._thread = threading.Thread(
            target=self.loop, args=(interval,), name="rcds-mount-revisions", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the loop and the notification subscriptions."""
        self._stop.set()
        self._wake.set()
        for sub in self._subscriptions:
            sub.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def loop(self, interval: float = 1.0) -> None:
        """Check each repository's TTL every ``interval`` seconds (or at once when asked) and
        apply new revisions, until :meth:`close`."""
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._forced_lock:
                forced, self._forced = self._forced, set()
            for mount in list(self.mounts.values()):
                pushed = self._pushed.pop(mount.fqrn, None)
                try:
                    if pushed is not None and mount.auto_update:
                        switched = self._apply_pushed(mount, pushed)
                    else:
                        switched = mount.check(mount.fqrn in forced)
                    if switched:
                        self.apply_revision(mount)
                except Exception:
                    log.exception("revision check of %s failed", mount.fqrn)

    @staticmethod
    def _apply_pushed(mount: RepoMount, manifest: bytes) -> bool:
        """Switch to a pushed manifest's revision (verified as a downloaded one); a manifest
        that fails the checks is ignored (it was only a hint) and the server is asked instead."""
        try:
            return mount.repo.apply_manifest(manifest)
        except RcdsError as exc:
            log.warning("%s: announced manifest ignored (%s); checking the server", mount.fqrn, exc)
            return mount.check(True)

    def apply_revision(self, mount: RepoMount) -> int:
        """Bring the kernel's caches in line with the mounted revision of ``mount`` (after a
        switch); returns how many invalidations were sent."""
        with self.lock:
            nodes = self.table.of_repository(mount.fqrn)
        paths = sorted({n.path for n in nodes})
        now = mount.reresolve(paths)
        entries: list[tuple[int, bytes]] = []
        inodes: list[int] = []
        with self.lock:
            for node in nodes:
                r = now.get(node.path)
                if r is None:
                    continue
                if r.stat is None or r.ino != node.ino:
                    node.stale = True
                    entries += node.links
                    node.links = set()
                    continue
                changed = node.is_dir or r.stat != node.stat
                node.stat = r.stat
                node.entry = r.located.entry if r.located is not None else node.entry
                node.revision = r.revision
                if changed:
                    inodes.append(node.ino)
            entries += list(self.table.negative)
            self.table.negative.clear()
        if self.session is not None:
            notify.invalidate(self.session, entries, inodes)
        mount.applied = max((r.revision for r in now.values()), default=mount.repo.revision)
        log.info(
            "%s: revision %d applied (%d names and %d inodes invalidated)",
            mount.fqrn,
            mount.repo.revision,
            len(entries),
            len(inodes),
        )
        return len(entries) + len(inodes)
