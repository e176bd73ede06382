"""HTTP fetching: proxy groups, host failover, retries and a host-vs-proxy failure taxonomy.

Modules, each with one job:

* :mod:`rcds.net.proxies` parses ``CVMFS_SERVER_URL``, ``CVMFS_HTTP_PROXY`` and
  ``CVMFS_FALLBACK_PROXY``;
* :mod:`rcds.net.settings` holds timeouts, retries, back-off and reset delays;
* :mod:`rcds.net.failures` classifies failed attempts (host, proxy, bad data);
* :mod:`rcds.net.transport` performs one streamed GET over keep-alive pools: plain HTTP
  over raw sockets (:mod:`rcds.net.http1`: prepared requests, a minimal response parser),
  ``https://`` through urllib3 (:mod:`rcds.net.legacy`);
* :mod:`rcds.net.pipeline` pipelines many small GETs for :meth:`Fetcher.fetch_many`;
* :mod:`rcds.net.state` keeps the sticky fail-over state shared by requests;
* :mod:`rcds.net.fetcher` ties them together in :class:`Fetcher`.
"""

from rcds.net.failures import Attempt, Failure, FetchError, Outcome
from rcds.net.fetcher import PROBE_PATH, Fetcher, StreamCheck
from rcds.net.proxies import DIRECT, ProxyConfig, parse_server_urls
from rcds.net.settings import USER_AGENT, NetSettings, Timeouts
from rcds.net.state import EndpointStatus

__all__ = [
    "DIRECT",
    "PROBE_PATH",
    "USER_AGENT",
    "Attempt",
    "EndpointStatus",
    "Failure",
    "FetchError",
    "Fetcher",
    "NetSettings",
    "Outcome",
    "ProxyConfig",
    "StreamCheck",
    "Timeouts",
    "parse_server_urls",
]
