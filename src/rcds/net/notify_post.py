"""Sending revision notifications to brokers: ``POST <server>/notifications/publish``.

:func:`post_activity` sends one message and waits for the answer. :class:`NotifySender` is what
publishers use: :meth:`NotifySender.announce` returns at once; a background thread posts to every
configured broker, keeps only the newest message per repository and broker while one is pending,
retries a failed post a few times with a growing pause, and otherwise only logs: a notification
is a hint, a lost one costs subscribers at most one TTL, so it never fails a publish.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

from rcds.errors import ConfigError, InputError, NetworkError
from rcds.format.notification import Activity

log = logging.getLogger("rcds.net.notify")

RETRIES = 3
TIMEOUT = 5.0
LocalSink = Callable[[Activity], None]


def check_server(url: str) -> str:
    """A broker base URL (``http(s)://host[:port][/prefix]``) without a trailing slash, else ConfigError."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"notification server {url!r}: give a base URL like http://host:4929 or .../api/v1")
    return url.strip().rstrip("/")


def connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the host of ``url`` and the path (with query) to ask it for."""
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    return conn, path


def post_activity(server: str, message: bytes, timeout: float = TIMEOUT) -> dict[str, object]:
    """POST one message to a broker; its JSON answer, or NetworkError saying what went wrong."""
    url = check_server(server) + "/notifications/publish"
    conn, path = connect(url, timeout)
    try:
        conn.request(
            "POST", path, body=message, headers={"Content-Type": "application/json", "User-Agent": "rcds"}
        )
        resp = conn.getresponse()
        body = resp.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        raise NetworkError(f"notification to {url} failed: {exc}; is the broker running?") from None
    finally:
        conn.close()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    if resp.status != 200:
        reason = answer.get("reason") if isinstance(answer, dict) else None
        raise NetworkError(f"notification to {url} refused: HTTP {resp.status}: {reason or body[:200]!r}")
    return answer if isinstance(answer, dict) else {}


class NotifySender:
    """Announces new revisions to brokers in the background (see the module docstring).

    ``local`` sinks (e.g. an in-process broker's thread-safe publish) are called synchronously.
    """

    def __init__(
        self,
        servers: Iterable[str] = (),
        local: Iterable[LocalSink] = (),
        *,
        timeout: float = TIMEOUT,
        retries: int = RETRIES,
        first_pause: float = 0.5,
    ) -> None:
        self.servers = [check_server(s) for s in servers]
        self.local = list(local)
        self.timeout = timeout
        self.retries = retries
        self.first_pause = first_pause
        self.sent = 0
        self.failed = 0
        self._pending: dict[tuple[str, str], bytes] = {}
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """True if there is anywhere to send to."""
        return bool(self.servers or self.local)

    def announce(self, manifest: bytes) -> None:
        """Announce the signed manifest of a new revision; never raises for delivery problems."""
        if not self.enabled:
            return
        try:
            activity = Activity.of(manifest)
        except InputError as exc:
            log.error("no notification sent: %s", exc)
            return
        for sink in self.local:
            try:
                sink(activity)
            except Exception:  # a hint must never fail the publish
                log.exception("local notification sink failed")
        if not self.servers:
            return
        line = activity.to_json()
        with self._cond:
            for s in self.servers:
                self._pending[(s, activity.repository)] = line
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="rcds-notify-send", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every pending message was sent or given up; True if that happened in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Try to send what is pending for up to ``timeout`` seconds, then stop."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + self.timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._pending))
                line = self._pending.pop(key)
                self._busy += 1
            try:
                self._deliver(key[0], key[1], line)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _deliver(self, server: str, repository: str, line: bytes) -> None:
        pause = self.first_pause
        for attempt in range(self.retries + 1):
            try:
                post_activity(server, line, self.timeout)
            except NetworkError as exc:
                with self._cond:
                    superseded = (server, repository) in self._pending or self._closed
                if superseded:  # a newer revision is queued for this broker: send that instead
                    return
                if attempt == self.retries:
                    self.failed += 1
                    log.warning("notification of %s not delivered: %s", repository, exc)
                    return
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, pause)
                pause *= 2
            else:
                self.sent += 1
                return
