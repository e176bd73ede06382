"""The publishing service without its web layer: repositories, spool, queue, stamps, cleanup, replicas.

Web handlers call the methods here; tests can drive them directly with an injected clock.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rcds.clock import Clock, system_clock
from rcds.errors import NotFoundError
from rcds.format.deflaters import Compression
from rcds.net.notify_post import NotifySender
from rcds.notify.broker import Broker
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.policy import Limits
from rcds.publish.stratum0 import Stratum0
from rcds.serve.http import RepositoryServer, make_server
from rcds.service.activity import CleanupEvent
from rcds.service.cleanup import Cleaner, CleanResult
from rcds.service.config import ServiceConfig
from rcds.service.live import LiveFeed
from rcds.service.partner import PartnerReplicas
from rcds.service.presence import Presence
from rcds.service.publisher import Job, PublishQueue
from rcds.service.slots import RepoSlot
from rcds.service.spool import Spool, Spooled, Upload
from rcds.service.stamps import StampBook
from rcds.service.status import CidStatus, State, StatusBook
from rcds.service.telemetry import Telemetry
from rcds.service.whitelist_keeper import WhitelistKeeper

log = logging.getLogger("rcds.service")
REPOSITORY_TTL = 15
"""Catalog TTL of service repositories: clients look for new revisions every 15 s, as today."""


@dataclass(frozen=True)
class Found:
    """Where a CID is published."""

    repository: str
    path: str  # /cvmfs/<repo>/<prefix>/<cid>


def init_command(config: ServiceConfig) -> str:
    """The ``rcds server init`` command line for ``config`` (as the user named it: file or base)."""
    if config.source == "<defaults>":
        return f"rcds server init --base {shlex.quote(str(config.base_dir))}"
    return f"rcds server init --config {shlex.quote(config.source)}"


def init_repositories(config: ServiceConfig, clock: Clock = system_clock) -> list[str]:
    """Create the configured repositories that do not exist yet; return their names."""
    created = []
    for name in config.repositories:
        root = config.state_dir / name
        if not (root / "repo.json").exists():
            settings = Settings(name=name, ttl=REPOSITORY_TTL, compression=config.compression)
            s3 = config.storage
            if s3 is not None:
                settings = dataclasses.replace(
                    settings,
                    storage=f"{s3.s3.rstrip('/')}/{name}",
                    s3_endpoint=s3.endpoint,
                    s3_region=s3.region,
                    s3_profile=s3.profile,
                    s3_acl=s3.acl,
                    s3_public_url=f"{s3.public_url.rstrip('/')}/{name}" if s3.public_url else "",
                )
            create_repository(root, settings, now=int(clock()))
            created.append(name)
    return created


class Service:
    """Everything of one publishing server except HTTP request handling."""

    def __init__(self, config: ServiceConfig, *, clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        missing = [n for n in config.repositories if not (config.state_dir / n / "repo.json").exists()]
        if missing:
            raise NotFoundError(
                f"repositories {', '.join(missing)} do not exist under {config.state_dir}; "
                f"create them with: {init_command(config)}"
            )
        self.broker = Broker(allow_publish=config.notify.allow_publish) if config.notify.broker else None
        self.notifier = NotifySender(
            config.notify.servers, [self.broker.publish_threadsafe] if self.broker is not None else []
        )
        announce = self.notifier.announce if self.notifier.enabled else None
        self.slots = [
            RepoSlot(n, Stratum0(config.state_dir / n, n, on_revision=announce)) for n in config.repositories
        ]
        for slot in self.slots:
            old = slot.s0.settings.compression
            if old != config.compression:  # the TOML names the compressor of new objects
                slot.s0.set_compression(Compression.parse(config.compression))
                log.info(
                    "%s: new objects are compressed with %s (was %s)", slot.name, config.compression, old
                )
        self.presence = Presence(config.prefix)
        for s in self.slots:
            self.presence.add_repository(s.name, s.public, own=True)
        self.telemetry = Telemetry(clock)
        self.activity = self.telemetry.activity
        self.partner = PartnerReplicas(config, self.presence, clock)
        self.partner.on_revision = announce  # the partner's revisions, once this server serves them
        self.status = StatusBook(config.spool_dir / "failed", clock)
        self.spool = Spool(config.spool_dir, config.max_upload_size)
        self.stamps = StampBook(self.slots, self.presence, config.stamp_prefix, clock)
        self.queue = PublishQueue(
            self.slots,
            self.presence,
            self.status,
            self.stamps,
            self.spool,
            config.prefix,
            clock,
            Limits(max_bytes=config.max_unpacked_size),
            self.activity,
        )
        self.cleaner = Cleaner(
            self.slots,
            self.presence,
            self.stamps,
            self.status,
            prefix=config.prefix,
            maxdays=config.cleanup.maxdays,
            start_hour=config.cleanup.start_hour,
            clock=clock,
            replica_publics=self.partner.publics,
            wake=self.queue.wake,
            on_result=self._cleaned,
        )
        self.whitelists = WhitelistKeeper(self.slots, clock, self.partner.publics)
        self.telemetry.watch(self)
        self.repo_server: RepositoryServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------
    def start(self, *, serve_repositories: bool = True, background: bool = True) -> None:
        """Requeue spooled uploads, start workers, and (optionally) the periodic threads."""
        self.spool.clean_incoming()
        self.whitelists.warn_missing_keys()
        self.whitelists.check()
        self.presence.refresh()
        for item in self.spool.pending():
            self.status.claim(item.cid)
            self.queue.submit(Job(item, "requeued"))
        self.queue.start()
        if serve_repositories:
            # S3-backed repositories are read from the bucket's endpoint, not served from here
            repos = {s.name: s.public for s in self.slots if isinstance(s.public, Path)}
            self.repo_server = make_server(
                repos, self.config.serve.host, self.config.serve.port, access_log=self.telemetry.repo_access
            )
            for name, public in self.partner.publics().items():
                self.repo_server.add_repository(name, public)
            self.partner.on_new_replica = self.repo_server.add_repository
            self.repo_server.start_background()
        if background:
            self._every(0.5, self.presence.refresh, "presence")
            self._every(self.config.stamps.flush_interval, self.stamps.flush, "stamps")
            self._every(60.0, self.housekeeping, "housekeeping")
            self._every(10.0, lambda: self.activity.queue_changed(self.queue.queued()), "samples")
            if self.partner.enabled:
                self._every(self.config.replica.pull_interval, self.partner.pull, "partner")

    def _every(self, seconds: float, fn: Callable[[], object], name: str) -> None:
        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    fn()
                except Exception:  # a periodic task must survive its own failures
                    log.exception("periodic task %s failed", name)

        t = threading.Thread(target=loop, name=f"rcds-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _cleaned(self, result: CleanResult, at: float) -> None:
        self.activity.cleaned(
            CleanupEvent(
                result.repository,
                at,
                len(result.removed),
                result.kept,
                result.stamps_dropped,
                result.bytes_freed,
                result.error,
            )
        )

    def stop(self) -> None:
        """Stop threads, write pending stamps, stop serving."""
        self._stop.set()
        self.queue.stop()
        for t in self._threads:
            t.join(10)
        self.stamps.flush()
        self.notifier.close()
        if self.repo_server is not None:
            self.repo_server.stop()

    def housekeeping(self) -> list[CleanResult]:
        """The once-a-minute duties: keep whitelists valid, run the cleanups whose hour has come."""
        try:
            self.whitelists.check()
        except Exception:  # a bug in the check must not stop the cleanup
            log.exception("whitelist check failed")
        return self.cleaner.tick()

    def health(self) -> dict[str, object]:
        """The service's own state for ``/pubapi/status`` without a CID and for metrics."""
        out = self.whitelists.status()
        problems = list(out["problems"])  # type: ignore[call-overload]
        return {
            "status": "WARNING" if problems else "OK",
            "problems": problems,
            "repositories": self.repositories(),
            "queued": self.queue.queued(),
            **{k: v for k, v in out.items() if k != "problems"},
        }

    # -- API operations ---------------------------------------------------------------
    def path_of(self, repository: str, cid: str) -> str:
        """The path jobs see: ``/cvmfs/<repo>/<prefix>/<cid>``."""
        return f"/cvmfs/{repository}/{self.config.prefix}/{cid}"

    def exists(self, cid: str) -> Found | None:
        """Where ``cid`` is published, in any own or replicated repository."""
        repo = self.presence.where(cid)
        return Found(repo, self.path_of(repo, cid)) if repo else None

    def update(self, cid: str) -> Found | None:
        """Like :meth:`exists`, and stamps the CID as used."""
        found = self.exists(cid)
        if found is not None:
            self.stamps.touch(cid)
        return found

    def begin_upload(self, cid: str, length: int | None, identity: str = "") -> Upload | Found | None:
        """Start receiving ``cid``: an Upload, Found if already published, None if already in progress.

        If a repository worker is idle, it starts publishing the upload while it arrives
        (:mod:`rcds.service.live`).
        """
        found = self.update(cid)
        if found is not None:
            return found
        if not self.status.claim(cid):
            return None
        try:
            upload = self.spool.start(cid, length)
        except BaseException:
            self.status.release(cid)
            raise
        self.activity.receiving(id(upload), cid, length, lambda: upload.size)
        feed = LiveFeed(upload.tmp)
        upload.feed = feed
        if not self.queue.offer_live(Job(Spooled(cid, upload.tmp, length or 0), identity, feed=feed)):
            upload.feed = None
        return upload

    def finish_upload(self, upload: Upload, identity: str) -> None:
        """Commit a received upload and queue it."""
        self.activity.received(id(upload))
        try:
            item = upload.commit()
        except BaseException:
            self.status.release(upload.cid)
            raise
        if upload.feed is not None and upload.feed.done(item):
            self.status.promote(upload.cid, upload.feed.repository)
            return  # a worker is publishing it already
        self.queue.submit(Job(item, identity))

    def abort_upload(self, upload: Upload) -> None:
        """Discard an upload that failed or was interrupted."""
        self.activity.received(id(upload))
        upload.abort()
        self.status.release(upload.cid)

    def status_of(self, cid: str) -> CidStatus:
        """What this server knows of ``cid`` (published anywhere counts as published)."""
        st = self.status.get(cid)
        if st is not None and st.state is not State.PUBLISHED:
            return st
        found = self.exists(cid)
        if found is not None:
            return CidStatus(cid, State.PUBLISHED, found.repository, updated=st.updated if st else 0.0)
        if st is not None:  # published earlier, cleaned up since
            return CidStatus(cid, State.FAILED, st.repository, "published earlier, since removed", st.updated)
        raise NotFoundError(f"cid {cid} is not known here")

    def repositories(self) -> list[str]:
        """All repositories clients may find CIDs in: own, then the partner's."""
        return list(self.config.repositories) + [
            n for n in self.partner.names() if n not in self.config.repositories
        ]

    def state_dir(self) -> Path:
        """Where repositories live."""
        return self.config.state_dir
