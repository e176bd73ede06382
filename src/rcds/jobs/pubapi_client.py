"""HTTP client of the publishing API (``/pubapi``) with credentials, failover and bounded retries.

Speaks today's text protocol (``OK``, ``PRESENT:<path>``, ``MISSING``, ``repos:a,b``), so it
works against the original cvmfs-user-pub servers as well as rcds. ``status`` (an rcds addition)
is optional: a 404 from it means "not known here".

Retries (rcds-today.md 3.4, with the waits bounded): every request tries each server in turn,
starting with the last one that answered; a full pass over the list is a *round*. Between rounds
it sleeps ``backoff * 2**round`` seconds (capped at ``backoff_max``, or the server's
``Retry-After``), for at most ``rounds`` rounds and ``deadline`` seconds in all. Connection
failures, timeouts, 408, 429 and 5xx are retried; any other 4xx (bad CID, forbidden, too large)
is final and raised at once with the server's one-line reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import urllib3

from rcds.errors import AuthError, ConfigError, InputError, NetworkError, NotFoundError, RcdsError
from rcds.jobs.credentials import Credentials

log = logging.getLogger("rcds.jobs")

UploadProgress = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while a tarball is uploaded."""

RETRYABLE_STATUS = frozenset({408, 429})
"""4xx answers that are retried like 5xx and network failures."""
MAX_REPLY = 1 << 16
BLOCK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one request: passes over the server list, backoff, total and per-call timeouts."""

    rounds: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    deadline: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.deadline <= 0 or self.backoff < 0:
            raise ConfigError("retries must be >= 0, the timeout > 0 and the backoff >= 0")


@dataclass(frozen=True)
class Reply:
    """An answer: which server gave it, its status and text (first line, stripped)."""

    server: str
    status: int
    text: str

    @property
    def path(self) -> str | None:
        """The path of ``PRESENT:<path>`` (exists, update, publish) or ``PUBLISHED:<path>`` (status)."""
        for prefix in ("PRESENT:", "PUBLISHED:"):
            if self.text.startswith(prefix):
                return self.text[len(prefix) :].strip() or None
        return None


@dataclass(frozen=True)
class Attempt:
    """One request sent (or tried): server, verb and what came of it."""

    server: str
    verb: str
    outcome: str


def parse_servers(values: Sequence[str]) -> list[str]:
    """Split comma- or space-separated server lists and turn each into a pubapi base URL.

    ``rcds01.fnal.gov`` becomes ``https://rcds01.fnal.gov/pubapi``; a URL keeps its scheme and
    port; ``/pubapi`` is appended unless present.
    """
    out: list[str] = []
    for value in values:
        for item in value.replace(",", " ").split():
            url = item.rstrip("/")
            if "://" not in url:
                url = "https://" + url
            scheme = url.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise ConfigError(f"server {item!r}: only http:// and https:// URLs are supported")
            if not url.endswith("/pubapi"):
                url += "/pubapi"
            if url not in out:
                out.append(url)
    if not out:
        raise ConfigError("no publishing server given; pass --server URL[,URL...] or set RCDS_SERVERS")
    return out


def final_error(server: str, verb: str, status: int, reason: str) -> RcdsError:
    """The error for a final (non-retryable) answer, keeping the server's reason."""
    msg = f"{server} refused {verb} ({status}): {reason or 'no reason given'}"
    if status in (401, 403):
        return AuthError(msg, status)
    if status == 404:
        return NotFoundError(msg)
    if status in (400, 413, 414, 422):
        return InputError(msg)
    return RcdsError(msg)


class _TransientError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Reader:
    """A file wrapper reporting bytes read to a progress callback."""

    def __init__(self, f: BinaryIO, total: int, progress: UploadProgress | None) -> None:
        self._f, self._total, self._progress, self.sent = f, total, progress, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sent += len(data)
        if self._progress is not None and data:
            self._progress(self.sent, self._total)
        return data


@dataclass
class PubapiClient:
    """Calls ``/pubapi/<verb>`` on a list of servers with failover (see the module docstring).

    ``attempts`` logs every request tried, for messages and tests. Not thread safe.
    """

    servers: Sequence[str]
    credentials: Credentials = field(default_factory=Credentials)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.servers = parse_servers(self.servers)
        self._preferred: str | None = None
        c = self.credentials
        self._pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(c.ca_file) if c.ca_file else None,
            ca_cert_dir=str(c.ca_dir) if c.ca_dir else None,
            cert_file=str(c.cert_file) if c.cert_file else None,
            key_file=str(c.key_file) if c.key_file else None,
            blocksize=BLOCK,
        )

    # -- verbs ----------------------------------------------------------------------------
    def exists(self, cid: str, *, policy: RetryPolicy | None = None) -> Reply:
        """``PRESENT:<path>`` or ``MISSING``."""
        return self.request("exists", cid, policy=policy)

    def update(self, cid: str) -> Reply:
        """Like exists, and marks the CID as used so it is not cleaned up."""
        return self.request("update", cid)

    def publish(self, cid: str, tarball: Path, progress: UploadProgress | None = None) -> Reply:
        """Upload ``tarball`` (streamed, with Content-Length): ``OK`` (queued) or ``PRESENT:<path>``."""
        return self.request("publish", cid, body=tarball, progress=progress)

    def status(self, cid: str, server: str) -> Reply | None:
        """One try of ``status`` on ``server``: ``QUEUED``, ``PUBLISHED:<path>``, ``FAILED:<why>``...

        None when the server does not know the CID (or the verb), or cannot be reached now.
        """
        try:
            return self.request("status", cid, servers=[server], policy=replace(self.policy, rounds=1))
        except (NotFoundError, NetworkError):
            return None

    def config(self) -> list[str]:
        """The repositories CIDs may appear in (``repos:a,b``)."""
        reply = self.request("config")
        if not reply.text.startswith("repos:"):
            raise NetworkError(f"{reply.server} answered config with {reply.text[:80]!r}, not repos:...")
        return [r.strip() for r in reply.text[len("repos:") :].split(",") if r.strip()]

    def close(self) -> None:
        """Close the connections."""
        self._pool.clear()

    # -- machinery --------------------------------------------------------------------------
    def request(
        self,
        verb: str,
        cid: str | None = None,
        *,
        body: Path | None = None,
        progress: UploadProgress | None = None,
        servers: Sequence[str] | None = None,
        policy: RetryPolicy | None = None,
    ) -> Reply:
        """Send ``verb`` with failover and retries; the first 2xx reply wins.

        Raises the mapped :func:`final_error` for a final 4xx, :class:`NetworkError` when every
        try failed.
        """
        pol = policy or self.policy
        order = list(servers or self.servers)
        if servers is None and self._preferred in order:
            order.remove(self._preferred)
            order.insert(0, self._preferred)
        start = self.clock()
        deadline = start + pol.deadline
        last: dict[str, str] = {}
        tries = 0
        for rnd in range(pol.rounds):
            retry_after: float | None = None
            for server in order:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                tries += 1
                try:
                    reply = self._once(server, verb, cid, body, progress, remaining, pol)
                except _TransientError as exc:
                    last[server] = str(exc)
                    self.attempts.append(Attempt(server, verb, str(exc)))
                    log.info("%s %s: %s", server, verb, exc)
                    if exc.retry_after is not None:
                        retry_after = max(retry_after or 0.0, exc.retry_after)
                    continue
                self.attempts.append(Attempt(server, verb, f"{reply.status} {reply.text[:60]}"))
                if not 200 <= reply.status < 300:
                    raise final_error(server, verb, reply.status, reply.text)
                if servers is None:
                    self._preferred = server
                return reply
            remaining = deadline - self.clock()
            if rnd == pol.rounds - 1 or remaining <= 0:
                break
            delay = min(pol.backoff * 2**rnd, pol.backoff_max)
            if retry_after is not None:
                delay = min(max(delay, retry_after), pol.backoff_max)
            self.sleep(min(delay, remaining))
        spent = self.clock() - start
        detail = "; ".join(f"{s}: {e}" for s, e in last.items()) or "no time left to try"
        raise NetworkError(
            f"{verb}{' of ' + cid if cid else ''} failed after {tries} tries in {spent:.1f} s "
            f"(servers tried in turn, {pol.rounds} rounds at most): {detail}"
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/plain", "User-Agent": "rcds-publish"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        return headers

    def _once(
        self,
        server: str,
        verb: str,
        cid: str | None,
        body: Path | None,
        progress: UploadProgress | None,
        remaining: float,
        pol: RetryPolicy,
    ) -> Reply:
        url = f"{server}/{verb}" + (f"?cid={quote(cid, safe='')}" if cid is not None else "")
        timeout = urllib3.Timeout(
            connect=min(pol.connect_timeout, remaining), read=min(pol.read_timeout, remaining)
        )
        headers = self._headers()
        try:
            if body is None:
                resp = self._pool.request(
                    "GET", url, headers=headers, timeout=timeout, retries=False, preload_content=False
                )
            else:
                resp = self._upload(url, headers, body, progress, timeout)
            try:
                data = resp.read(MAX_REPLY)
            finally:
                resp.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise _TransientError(_describe(exc)) from None
        text = data.decode("utf-8", "replace").strip().splitlines()
        line = text[0].strip() if text else ""
        if resp.status >= 500 or resp.status in RETRYABLE_STATUS:
            raise _TransientError(
                f"{resp.status} {line}".strip(), _retry_after(resp.headers.get("Retry-After"))
            )
        return Reply(server, resp.status, line)

    def _upload(
        self,
        url: str,
        headers: dict[str, str],
        body: Path,
        progress: UploadProgress | None,
        timeout: urllib3.Timeout,
    ) -> urllib3.BaseHTTPResponse:
        try:
            f = open(body, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"cannot read tarball {body} ({exc.strerror})", str(body)) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            headers = {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
            reader = _Reader(f, size, progress)
            return self._pool.request(
                "POST",
                url,
                body=reader,  # type: ignore[arg-type]  # read() is all urllib3 uses
                headers=headers,
                timeout=timeout,
                retries=False,
                preload_content=False,
            )


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return " ".join(text.split())[:200]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
