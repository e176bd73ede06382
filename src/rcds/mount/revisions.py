"""Applying new revisions to a live mount: TTL checks, on-demand checks, kernel cache invalidation.

A trio task asks each repository once a second whether its TTL expired (the client's
:meth:`~rcds.client.repository.Repository.refresh`); :meth:`RevisionKeeper.refresh` asks at once
(a notification subscriber, SIGUSR1). After a switch every inode the kernel holds is resolved
again in the new revision: names whose inode changed or vanished, and the negative entries
handed out, are invalidated in the kernel (``invalidate_entry``), and directories and changed
inodes get ``invalidate_inode`` (attributes, listings, pages). Open files keep their inode and
their content.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import pyfuse3
import trio

from rcds.errors import RcdsError
from rcds.mount.inodes import NodeTable
from rcds.mount.repomount import RepoMount
from rcds.net.notify_stream import Subscription

log = logging.getLogger("rcds.mount")


class RevisionKeeper:
    """Switches the repositories of a mount to new revisions (see the module docstring)."""

    def __init__(self, table: NodeTable, mounts: dict[str, RepoMount], limiter: trio.CapacityLimiter) -> None:
        self.table = table
        self.mounts = mounts
        self.limiter = limiter
        self._wake = trio.Event()
        self._forced: set[str] = set()
        self._pushed: dict[str, bytes] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._subscriptions: list[Subscription] = []

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

    def close(self) -> None:
        """Stop following notifications."""
        for sub in self._subscriptions:
            sub.close()

    def refresh(self, fqrn: str | None = None) -> None:
        """Ask for a revision check of ``fqrn`` (every repository if None) now, e.g. after a
        notification. Thread safe, returns at once; the switch happens in :meth:`revision_loop`."""
        names = [fqrn] if fqrn else list(self.mounts)
        token = self._token
        if token is None:  # the loop has not started: it will see them first thing
            self._forced.update(names)
            return

        def wake() -> None:
            self._forced.update(names)
            self._wake.set()

        try:
            trio.from_thread.run_sync(wake, trio_token=token)
        except RuntimeError:  # called from the trio thread itself
            wake()

    async def loop(self, interval: float = 1.0) -> None:
        """Check each repository's TTL every ``interval`` seconds (or at once when asked) and
        apply new revisions; runs until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        while True:
            with trio.move_on_after(interval):
                await self._wake.wait()
            self._wake = trio.Event()
            forced, self._forced = self._forced, set()
            for mount in list(self.mounts.values()):
                pushed = self._pushed.pop(mount.fqrn, None)
                try:
                    if pushed is not None and mount.auto_update:
                        switched = await trio.to_thread.run_sync(self._apply_pushed, mount, pushed)
                    else:
                        switched = await trio.to_thread.run_sync(mount.check, mount.fqrn in forced)
                except Exception:
                    log.exception("revision check of %s failed", mount.fqrn)
                    continue
                if switched:
                    await self.apply_revision(mount)

    @staticmethod
    def _apply_pushed(mount: RepoMount, manifest: bytes) -> bool:
        """Switch to a pushed manifest's revision (verified as a downloaded one); a manifest
        that fails the checks is ignored (it was only a hint) and the server is asked instead."""
        try:
            return mount.repo.apply_manifest(manifest)
        except RcdsError as exc:
            log.warning("%s: announced manifest ignored (%s); checking the server", mount.fqrn, exc)
            return mount.check(True)

    async def apply_revision(self, mount: RepoMount) -> int:
        """Bring the kernel's caches in line with the mounted revision of ``mount`` (after a
        switch); returns how many invalidations were sent."""
        nodes = self.table.of_repository(mount.fqrn)
        paths = sorted({n.path for n in nodes})
        now = await trio.to_thread.run_sync(mount.reresolve, paths, limiter=self.limiter)
        entries: list[tuple[int, bytes]] = []
        inodes: list[int] = []
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
        await trio.to_thread.run_sync(_invalidate, entries, inodes)
        mount.applied = max((r.revision for r in now.values()), default=mount.repo.revision)
        log.info(
            "%s: revision %d applied (%d names and %d inodes invalidated)",
            mount.fqrn,
            mount.repo.revision,
            len(entries),
            len(inodes),
        )
        return len(entries) + len(inodes)


def _invalidate(entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
    """Tell the kernel to forget names and inode attributes/pages (unknown ones are skipped)."""
    for parent, name in entries:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
    for ino in inodes:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino)
