"""Failure taxonomy: who is to blame for a failed download attempt, and may it be retried.

The rules are those of the stock client (``network/download.cc``):

* HTTP 2xx is OK; 404, 400 and 5xx from the host are *host* failures; 429 is a transient
  host failure (retried); a 3xx (redirects are not followed) is a host failure; any other
  code is a *proxy* failure when proxied, a host failure when ``DIRECT``.
* A proxy's own error page (``X-Squid-Error`` or ``Proxy-Status: …; error=…``) turns a
  host failure into a proxy failure.
* Connection errors, timeouts and short transfers are transient (retried on the same
  host/proxy pair); then they are blamed on the proxy, or on the host when ``DIRECT``.
* Data that fails the caller's validation is *bad data*: retried once with no-cache
  headers, then treated as a host failure.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import NamedTuple

from rcds.errors import NetworkError
from rcds.net.proxies import DIRECT


class Outcome(Enum):
    """Classification of one download attempt."""

    OK = "ok"
    HOST = "host failure"
    PROXY = "proxy failure"
    BAD_DATA = "bad data"


class Failure(NamedTuple):
    """Why one attempt failed.

    ``transient`` failures are retried on the same host/proxy pair (with back-off) before
    failing over. ``status`` is the HTTP status when there was one.
    """

    outcome: Outcome
    reason: str
    transient: bool = False
    status: int | None = None

    def as_host_failure(self, reason: str | None = None) -> Failure:
        """The same failure blamed on the host (not transient)."""
        return Failure(Outcome.HOST, reason or self.reason, False, self.status)


class AttemptError(Exception):
    """Raised by the transport when one attempt fails; carries the :class:`Failure`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def classify_status(status: int, headers: Mapping[str, str], *, proxied: bool) -> Failure | None:
    """Classify an HTTP response status; ``None`` means OK (2xx).

    ``headers`` must be case-insensitive (as urllib3's are).
    """
    if 200 <= status < 300:
        return None
    reason = f"HTTP {status}"
    if status == 429:
        return Failure(Outcome.HOST, f"{reason} (too many requests)", True, status)
    if status in (400, 404) or 500 <= status < 600:
        outcome = Outcome.HOST
    elif 300 <= status < 400:
        return Failure(Outcome.HOST, f"{reason} (redirects are not followed)", False, status)
    else:
        outcome = Outcome.PROXY if proxied else Outcome.HOST
    if outcome is Outcome.HOST and proxied:
        squid = headers.get("X-Squid-Error")
        proxy_status = headers.get("Proxy-Status", "")
        if squid or "error=" in proxy_status.lower():
            detail = squid or proxy_status
            return Failure(Outcome.PROXY, f"{reason} from the proxy ({detail.strip()})", False, status)
    if status == 404:
        reason += " (not found)"
    return Failure(outcome, reason, False, status)


def classify_exception(exc: BaseException, *, proxied: bool) -> Failure:
    """Classify an exception raised while connecting or transferring.

    Through a proxy everything but a TLS problem with the server is blamed on the proxy (the
    client only talks to the proxy); without one, on the host.
    """
    blame = Outcome.PROXY if proxied else Outcome.HOST
    detail = describe_exception(exc)
    resolve_errors = (*_urllib3("NameResolutionError"), socket.gaierror)
    if isinstance(exc, resolve_errors) or _caused_by(exc, socket.gaierror):
        what = "proxy name" if proxied else "host name"
        return Failure(blame, f"cannot resolve {what} ({detail})", False)
    if isinstance(exc, _urllib3("ProxyError")):
        return Failure(Outcome.PROXY, f"cannot connect to the proxy ({detail})", True)
    if isinstance(exc, (*_urllib3("SSLError"), *_ssl_error())):
        return Failure(Outcome.HOST, f"TLS error ({detail})", False)
    if isinstance(exc, (*_urllib3("ReadTimeoutError"), TimeoutError, socket.timeout)):
        return Failure(blame, f"timed out ({detail})", True)
    if isinstance(exc, (*_urllib3("NewConnectionError"), ConnectionRefusedError)):
        return Failure(blame, f"cannot connect ({detail})", True)
    if isinstance(exc, _urllib3("ConnectTimeoutError")):
        return Failure(blame, f"connect timed out ({detail})", True)
    return Failure(blame, f"transfer failed ({detail})", True)


def _urllib3(name: str) -> tuple[type[BaseException], ...]:
    """urllib3's exception class ``name``, if urllib3 is loaded (only the https transport loads it).

    Without urllib3 in the process none of its exceptions can exist, so the client's plain-HTTP
    path never pays for importing it.
    """
    module = sys.modules.get("urllib3.exceptions")
    cls = getattr(module, name, None) if module is not None else None
    return (cls,) if isinstance(cls, type) and issubclass(cls, BaseException) else ()


def _ssl_error() -> tuple[type[BaseException], ...]:
    """:class:`ssl.SSLError`, if :mod:`ssl` is loaded (the https transport loads it).

    Without :mod:`ssl` in the process no TLS error can exist, so the plain-HTTP path never pays
    for importing it.
    """
    module = sys.modules.get("ssl")
    cls = getattr(module, "SSLError", None) if module is not None else None
    return (cls,) if isinstance(cls, type) and issubclass(cls, BaseException) else ()


def describe_exception(exc: BaseException) -> str:
    """A short human-readable cause: the innermost OS error when there is one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None and cur.strerror:
            name = errno.errorcode.get(cur.errno, "")
            return f"{cur.strerror.lower()}" + (f", {name}" if name else "")
        nxt = getattr(cur, "original_error", None) or getattr(cur, "reason", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    text = str(exc) or type(exc).__name__
    if ": " in text and text.startswith(("HTTPConnection", "HTTPSConnection", "<urllib3")):
        text = text.split(": ", 1)[1]
    return text


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        nxt = getattr(cur, "original_error", None) or getattr(cur, "reason", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return False


class Attempt(NamedTuple):
    """One tried (host, proxy) pair and why it failed."""

    host: str
    proxy: str
    failure: Failure

    def __str__(self) -> str:
        via = "directly" if self.proxy == DIRECT else f"via proxy {self.proxy}"
        return f"{self.host} {via}: {self.failure.reason} [{self.failure.outcome.value}]"


class FetchError(NetworkError):
    """Every host and proxy failed for one request; ``attempts`` lists what was tried."""

    def __init__(self, path: str, attempts: Sequence[Attempt]) -> None:
        self.path = path
        self.attempts = tuple(attempts)
        super().__init__(_message(path, self.attempts))

    @property
    def not_found(self) -> bool:
        """True when every host answered 404: the file is missing, the network is fine."""
        return bool(self.attempts) and all(a.failure.status == 404 for a in self.attempts)


def _message(path: str, attempts: Sequence[Attempt]) -> str:
    lines = [f"cannot download {path!r}: every server and proxy failed ({len(attempts)} attempts):"]
    lines += [f"  {i}. {a}" for i, a in enumerate(attempts, 1)]
    outcomes = {a.failure.outcome for a in attempts}
    hints: list[str] = []
    if attempts and all(a.failure.status == 404 for a in attempts):
        hints.append(
            "the file is missing on every server: check the repository name and that it is published"
        )
    else:
        if Outcome.PROXY in outcomes:
            hints.append(
                "check that the proxies in CVMFS_HTTP_PROXY / CVMFS_FALLBACK_PROXY are running and "
                "accept requests from this machine"
            )
        if Outcome.HOST in outcomes or Outcome.BAD_DATA in outcomes:
            hints.append("check that the servers in CVMFS_SERVER_URL are up and serve this repository")
        if any(a.failure.outcome is Outcome.BAD_DATA for a in attempts):
            hints.append("corrupt data came back even with no-cache: a server or proxy cache may be damaged")
        hints.append("check this machine's network connection (try the URLs above with curl)")
    lines.append("What to check: " + "; ".join(hints) + ".")
    return "\n".join(lines)
