"""Submit side: turn code into a tarball and a CID, publish it with failover, optionally wait.

The flow of jobsub's ``tarfile_in_dropbox`` (rcds-today.md 3.4, 3.5), with its weak spots
fixed: a directory is packed reproducibly (:mod:`rcds.jobs.pack`), so the same code always has
the same CID ``<group>/<sha256 of the tarball>`` and is uploaded once; ``exists`` is asked
first and a present CID is only ``update``-d (kept alive); otherwise the tarball is streamed
from disk to the first server that takes it; every call fails over between servers within
bounded retries (:mod:`rcds.jobs.pubapi_client`). With ``wait`` the call returns once a server
reports the CID published (or raises :class:`PublishFailedError` with the server's reason);
with ``client_check`` it also waits until the client library sees the path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rcds.errors import InputError, NetworkError, RcdsError
from rcds.jobs.credentials import Credentials
from rcds.jobs.pack import cid_for, hash_file, pack_directory
from rcds.jobs.pubapi_client import Attempt, PubapiClient, RetryPolicy
from rcds.jobs.wait import ClientAccess, PollPolicy, WaitTimeoutError, wait_for_code

log = logging.getLogger("rcds.jobs")

Progress = Callable[[str, int, int | None], None]
"""Called with (phase ``"pack"`` or ``"upload"``, bytes done, total bytes if known)."""

SUBMIT_POLL = PollPolicy(start=0.25, factor=2.0, cap=5.0)
"""Polls of the server while waiting at submit time."""

_TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


class PublishFailedError(RcdsError):
    """The server could not publish the tarball; the message carries its reason."""


@dataclass(frozen=True)
class PublishOutcome:
    """The result of :func:`publish_code`.

    ``path`` (``/cvmfs/<repo>/<prefix>/<cid>``) and ``repository`` are None when the upload
    was queued and nobody waited. ``uploaded`` tells whether the tarball was sent (False
    when the CID was already published); ``server`` is the pubapi that answered last;
    ``attempts`` lists every request tried, failed ones included.
    """

    cid: str
    path: str | None
    repository: str | None
    uploaded: bool
    server: str
    size: int
    seconds: float
    attempts: tuple[Attempt, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The ``--json`` output."""
        return {
            "cid": self.cid,
            "path": self.path,
            "repository": self.repository,
            "uploaded": self.uploaded,
            "server": self.server,
            "size": self.size,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Tarball:
    """A tarball ready to publish; ``temporary`` ones are deleted after publishing."""

    path: Path
    sha256: str
    size: int
    temporary: bool


def prepare(
    source: Path,
    *,
    exclude: Sequence[str] = (),
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> Tarball:
    """Pack a directory reproducibly into ``workdir`` (default: the temp dir), or check a tarball file."""
    source = Path(source)
    if source.is_dir():
        fd, name = tempfile.mkstemp(prefix="rcds-", suffix=".tar.gz", dir=workdir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                report = None if progress is None else (lambda n: progress("pack", n, None))
                result = pack_directory(source, out, exclude=exclude, progress=report)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Tarball(path, result.sha256, result.size, True)
    if not source.is_file():
        raise InputError(f"{source} is neither a directory nor a tarball file", str(source))
    if exclude:
        raise InputError("--exclude applies to directories only; a tarball is published as it is")
    try:
        with open(source, "rb") as f:
            head = f.read(265)
    except OSError as exc:
        raise InputError(f"cannot read {source} ({exc.strerror})", str(source)) from None
    if not (head.startswith(_TAR_MAGIC) or head[257:262] == b"ustar"):
        raise InputError(
            f"{source} is not a tarball (tar, or tar compressed with gzip, bzip2, xz or zstd); "
            "give a directory to have it packed",
            str(source),
        )
    return Tarball(source, hash_file(source), source.stat().st_size, False)


def _locate(path: str, cid: str) -> tuple[str, str] | None:
    """``/cvmfs/<repo>/<prefix>/<cid>`` -> (repo, prefix); None for another shape."""
    parts = path.strip("/").split("/")
    inner = "/".join(parts[2:])
    if len(parts) < 3 or parts[0] != "cvmfs" or not inner.endswith("/" + cid):
        return None
    return parts[1], inner[: -len(cid) - 1]


def wait_published(
    client: PubapiClient,
    cid: str,
    server: str,
    *,
    timeout: float,
    poll: PollPolicy = SUBMIT_POLL,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll ``status`` on ``server`` (the one that took the upload) and ``exists`` on all servers
    until the CID is published; return its path.

    Raises :class:`PublishFailedError` when the server reports ``FAILED:<reason>``, and
    :class:`WaitTimeoutError` after ``timeout`` seconds.
    """
    start = clock()
    quick = replace(client.policy, rounds=1, deadline=max(1.0, min(client.policy.deadline, timeout)))
    last = "no answer yet"
    for delay in poll.delays():
        st = client.status(cid, server)
        if st is not None:
            if st.text.startswith("FAILED"):
                reason = st.text.partition(":")[2].strip() or "no reason given"
                raise PublishFailedError(f"{st.server} could not publish {cid}: {reason}")
            if st.path:
                return st.path
            last = f"{st.server} says {st.text}"
        try:
            reply = client.exists(cid, policy=quick)
        except NetworkError as exc:
            last = str(exc)
        else:
            if reply.path:
                return reply.path
            if st is None:
                last = f"{reply.server} says {reply.text}"
        remaining = start + timeout - clock()
        if remaining <= 0:
            raise WaitTimeoutError(f"{cid} was not published within {timeout:g} s; last: {last}")
        sleep(min(delay, remaining))
    raise AssertionError("unreachable")  # pragma: no cover


def publish_code(
    source: Path,
    group: str,
    servers: Sequence[str],
    *,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    exclude: Sequence[str] = (),
    workdir: Path | None = None,
    progress: Progress | None = None,
    wait: bool = False,
    wait_timeout: float = 600.0,
    client_check: ClientAccess | None = None,
    poll: PollPolicy = SUBMIT_POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishOutcome:
    """Publish the directory or tarball ``source`` under ``group`` (see the module docstring).

    ``client_check`` (implies ``wait``) also waits until the published path is visible through
    the client library with those URLs and keys. ``wait_timeout`` bounds all the waiting.
    """
    start = time.monotonic()
    tarball = prepare(source, exclude=exclude, workdir=workdir, progress=progress)
    client = PubapiClient(servers, credentials or Credentials(), retry or RetryPolicy(), sleep=sleep)
    try:
        cid = cid_for(group, tarball.sha256)
        reply = client.exists(cid)
        uploaded = False
        if reply.path:
            log.info("%s is published already at %s; marking it used", cid, reply.path)
            reply = client.update(cid)
        if not reply.path:
            upload = None if progress is None else (lambda n, total: progress("upload", n, total))
            reply = client.publish(cid, tarball.path, upload)
            uploaded = reply.path is None
            log.info("%s: %s answered %s", cid, reply.server, reply.text)
        path = reply.path
        if path is None and (wait or client_check is not None):
            path = wait_published(client, cid, reply.server, timeout=wait_timeout, poll=poll, sleep=sleep)
        where = _locate(path, cid) if path else None
        repository = where[0] if where else None
        if client_check is not None and where is None:
            raise PublishFailedError(f"cannot tell the repository of {cid} from the server's path {path!r}")
        if client_check is not None and where is not None:
            left = max(1.0, wait_timeout - (time.monotonic() - start))
            _wait_client(cid, where[0], where[1], client_check, left, sleep)
        elapsed = time.monotonic() - start
        return PublishOutcome(
            cid, path, repository, uploaded, reply.server, tarball.size, elapsed, tuple(client.attempts)
        )
    finally:
        client.close()
        if tarball.temporary:
            with contextlib.suppress(OSError):
                tarball.path.unlink()


def _wait_client(
    cid: str,
    repository: str,
    prefix: str,
    access: ClientAccess,
    timeout: float,
    sleep: Callable[[float], None],
) -> None:
    """Wait until the client library sees ``/<prefix>/<cid>`` in ``repository`` (never via a mount)."""
    try:
        wait_for_code(
            cid,
            [repository],
            timeout=timeout,
            cvmfs_root=None,
            prefix=prefix,
            access=access,
            poll=SUBMIT_POLL,
            sleep=sleep,
        )
    except WaitTimeoutError as exc:
        raise WaitTimeoutError(f"published, but not visible through the client library: {exc}") from None
