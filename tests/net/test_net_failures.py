"""The failure taxonomy (§10.3) and the NetworkError message."""

from __future__ import annotations

import socket

import pytest
import urllib3
import urllib3.exceptions as ue

from rcds.errors import NetworkError
from rcds.net import DIRECT, Attempt, Failure, FetchError, Outcome
from rcds.net.failures import classify_exception, classify_status, describe_exception

H = urllib3.HTTPHeaderDict


@pytest.mark.parametrize("status", [200, 203, 206])
def test_2xx_is_ok(status: int) -> None:
    assert classify_status(status, H(), proxied=True) is None


@pytest.mark.parametrize("status", [400, 404, 500, 502, 503, 504])
@pytest.mark.parametrize("proxied", [True, False])
def test_host_errors(status: int, proxied: bool) -> None:
    f = classify_status(status, H(), proxied=proxied)
    assert f is not None
    assert (f.outcome, f.transient, f.status) == (Outcome.HOST, False, status)


def test_429_is_a_transient_host_failure() -> None:
    f = classify_status(429, H({"X-Squid-Error": "x"}), proxied=True)
    assert f is not None
    assert (f.outcome, f.transient) == (Outcome.HOST, True)


@pytest.mark.parametrize("status", [401, 403, 407, 410])
def test_other_codes_blame_the_proxy_when_proxied(status: int) -> None:
    proxied = classify_status(status, H(), proxied=True)
    direct = classify_status(status, H(), proxied=False)
    assert proxied is not None and proxied.outcome is Outcome.PROXY
    assert direct is not None and direct.outcome is Outcome.HOST


def test_redirects_are_host_failures() -> None:
    f = classify_status(302, H({"Location": "http://elsewhere/"}), proxied=True)
    assert f is not None and f.outcome is Outcome.HOST and "redirect" in f.reason


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Squid-Error": "ERR_CONNECT_FAIL 111"},
        {"Proxy-Status": "squid; error=connection_refused; details=errno=111"},
        {"proxy-status": "cache.example; ERROR=dns_timeout"},
    ],
)
def test_proxy_error_headers_turn_host_failures_into_proxy_failures(headers: dict[str, str]) -> None:
    f = classify_status(503, H(headers), proxied=True)
    assert f is not None
    assert f.outcome is Outcome.PROXY and "from the proxy" in f.reason
    # Without a proxy the answer is the host's (e.g. a reverse proxy in front of it).
    g = classify_status(503, H(headers), proxied=False)
    assert g is not None and g.outcome is Outcome.HOST


def test_proxy_status_without_error_is_still_the_hosts() -> None:
    f = classify_status(404, H({"Proxy-Status": "squid; fwd=miss"}), proxied=True)
    assert f is not None and f.outcome is Outcome.HOST


def _refused() -> BaseException:
    """A real connection-refused error from urllib3."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, retries=False)
    with pytest.raises(ue.HTTPError) as info:
        pool.request("GET", "/")
    return info.value


@pytest.mark.timeout(30)
def test_connection_errors_blame_the_proxy_or_the_host() -> None:
    exc = _refused()
    direct = classify_exception(exc, proxied=False)
    proxied = classify_exception(exc, proxied=True)
    assert (direct.outcome, direct.transient) == (Outcome.HOST, True)
    assert (proxied.outcome, proxied.transient) == (Outcome.PROXY, True)
    assert "connection refused" in direct.reason.lower()
    assert "refused" in describe_exception(exc).lower()


def test_timeouts_and_resolution() -> None:
    t = classify_exception(ue.ReadTimeoutError(None, "/", "read timed out"), proxied=True)  # type: ignore[arg-type]
    assert (t.outcome, t.transient) == (Outcome.PROXY, True)
    r = classify_exception(socket.gaierror(-2, "Name or service not known"), proxied=False)
    assert (r.outcome, r.transient) == (Outcome.HOST, False)
    assert "resolve" in r.reason


def test_bad_data_becomes_a_host_failure() -> None:
    f = Failure(Outcome.BAD_DATA, "bad data: hash mismatch").as_host_failure()
    assert (f.outcome, f.reason, f.transient) == (Outcome.HOST, "bad data: hash mismatch", False)


def test_fetch_error_lists_every_try_and_says_what_to_check() -> None:
    attempts = [
        Attempt(
            "http://h1/cvmfs/r", "http://p1:3128", Failure(Outcome.PROXY, "cannot connect (refused)", True)
        ),
        Attempt("http://h1/cvmfs/r", DIRECT, Failure(Outcome.HOST, "HTTP 503", False, 503)),
        Attempt("http://h2/cvmfs/r", DIRECT, Failure(Outcome.BAD_DATA, "bad data: hash mismatch")),
    ]
    err = FetchError("data/ab/cd", attempts)
    assert isinstance(err, NetworkError)
    text = str(err)
    assert "'data/ab/cd'" in text and "3 attempts" in text
    assert "1. http://h1/cvmfs/r via proxy http://p1:3128: cannot connect (refused) [proxy failure]" in text
    assert "2. http://h1/cvmfs/r directly: HTTP 503 [host failure]" in text
    assert "CVMFS_HTTP_PROXY" in text and "CVMFS_SERVER_URL" in text and "no-cache" in text
    assert not err.not_found
    nf = FetchError(
        "x", [Attempt("http://h1/cvmfs/r", DIRECT, Failure(Outcome.HOST, "HTTP 404", False, 404))]
    )
    assert nf.not_found and "missing on every server" in str(nf)
