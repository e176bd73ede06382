"""Parse the server and proxy lists: ``CVMFS_SERVER_URL``, ``CVMFS_HTTP_PROXY``, ``CVMFS_FALLBACK_PROXY``.

Proxy syntax: ``;`` separates fail-over groups, ``|`` separates load-balanced proxies inside a
group, and ``DIRECT`` means "connect to the server without a proxy". When a fallback list is
set, every ``DIRECT`` is removed from both lists, as the stock client does.

Server syntax: ``;``-separated repository base URLs in which ``@fqrn@`` stands for the full
repository name and ``@org@`` for its first label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Self
from urllib.parse import urlsplit

from rcds.errors import ConfigError

DIRECT = "DIRECT"
"""The pseudo-proxy meaning "no proxy"."""

Groups = tuple[tuple[str, ...], ...]


class _ProxyConfigFields(NamedTuple):
    groups: Groups
    fallback_groups: Groups


class ProxyConfig(_ProxyConfigFields):
    """Proxy fail-over groups: the regular ones first, then the fallback ones.

    An immutable record (a :class:`~typing.NamedTuple`); building one checks that there is a
    proxy and that no group is empty.
    """

    __slots__ = ()

    def __new__(cls, groups: Groups, fallback_groups: Groups = ()) -> ProxyConfig:
        """Proxy groups in order of preference, and fallback groups; ConfigError if none at all."""
        if not groups and not fallback_groups:
            raise ConfigError("the proxy configuration has no proxy at all; use DIRECT for no proxy")
        for group in (*groups, *fallback_groups):
            if not group:
                raise ConfigError("a proxy group is empty")
        return tuple.__new__(cls, (groups, fallback_groups))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # mypy: no classmethod
        return cls(*iterable)  # _replace builds through here: keep the checks

    @classmethod
    def direct(cls) -> ProxyConfig:
        """No proxy: connect to the servers directly."""
        return cls(((DIRECT,),))

    @classmethod
    def parse(cls, http_proxy: str | None, fallback_proxy: str | None = None) -> ProxyConfig:
        """Parse ``CVMFS_HTTP_PROXY`` and ``CVMFS_FALLBACK_PROXY`` values.

        An empty or missing ``http_proxy`` is a :class:`ConfigError`, as for a stock mount.
        """
        if http_proxy is None or not http_proxy.strip():
            raise ConfigError(
                "CVMFS_HTTP_PROXY is empty: set it to your site's proxies, e.g. "
                "'http://squid1.example.org:3128|http://squid2.example.org:3128', "
                "or to DIRECT to connect to the servers without a proxy"
            )
        groups = parse_proxy_groups(http_proxy, "CVMFS_HTTP_PROXY")
        fallback = parse_proxy_groups(fallback_proxy or "", "CVMFS_FALLBACK_PROXY")
        if fallback:
            groups = _without_direct(groups)
            fallback = _without_direct(fallback)
            if not fallback:
                raise ConfigError(
                    "CVMFS_FALLBACK_PROXY lists only DIRECT, which a fallback list removes; "
                    "list real proxies there or unset it"
                )
        return cls(groups, fallback)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ProxyConfig:
        """Read ``CVMFS_HTTP_PROXY`` and ``CVMFS_FALLBACK_PROXY`` from a parameter mapping."""
        return cls.parse(params.get("CVMFS_HTTP_PROXY"), params.get("CVMFS_FALLBACK_PROXY"))

    @property
    def all_groups(self) -> Groups:
        """Every group in fail-over order: the regular ones, then the fallback ones."""
        return self.groups + self.fallback_groups

    @property
    def proxy_count(self) -> int:
        """The number of proxies (``DIRECT`` included) over all groups."""
        return sum(len(g) for g in self.all_groups)

    def __str__(self) -> str:
        text = ";".join("|".join(g) for g in self.groups)
        if self.fallback_groups:
            text += " (fallback: " + ";".join("|".join(g) for g in self.fallback_groups) + ")"
        return text


def parse_proxy_groups(text: str, setting: str = "proxy list") -> Groups:
    """Parse one proxy list into fail-over groups of normalized proxy URLs (or ``DIRECT``).

    Empty groups and entries (from stray separators) are ignored.
    """
    groups: list[tuple[str, ...]] = []
    for raw_group in text.split(";"):
        entries = [normalize_proxy(e, setting) for e in raw_group.split("|") if e.strip()]
        if entries:
            groups.append(tuple(dict.fromkeys(entries)))
    return tuple(groups)


def normalize_proxy(entry: str, setting: str = "proxy list") -> str:
    """Normalize one proxy: ``DIRECT``, or ``scheme://host[:port]`` (``http://`` is the default)."""
    entry = entry.strip()
    if entry.upper() == DIRECT:
        return DIRECT
    if entry.lower() == "auto":
        raise ConfigError(
            f"{setting}: 'auto' (proxy auto-discovery through WPAD/PAC) is not supported by rcds; "
            "list the proxies explicitly"
        )
    url = entry if "://" in entry else "http://" + entry
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{setting}: proxy {entry!r} has an invalid port number") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{setting}: {entry!r} is not a proxy; write proxies as http://host:port, "
            "separate load-balanced proxies with '|' and fail-over groups with ';'"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"{setting}: proxy {entry!r} must not contain a path")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None:
        auth = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{auth}@{netloc}"
    return f"{parts.scheme.lower()}://{netloc}"


def _without_direct(groups: Groups) -> Groups:
    out = (tuple(p for p in g if p != DIRECT) for g in groups)
    return tuple(g for g in out if g)


def org_of(fqrn: str) -> str:
    """The organisation of a repository: the first label of its fully qualified name."""
    return fqrn.split(".", 1)[0]


def expand_server_url(url: str, fqrn: str) -> str:
    """Substitute ``@fqrn@`` and ``@org@`` in one server URL and check its form."""
    return check_server_url(url.replace("@fqrn@", fqrn).replace("@org@", org_of(fqrn)))


def check_server_url(url: str) -> str:
    """Check a repository base URL (``http(s)://host[:port]/path``); return it without a trailing ``/``."""
    expanded = url.strip().rstrip("/")
    if "@fqrn@" in expanded or "@org@" in expanded:
        raise ConfigError(f"server URL {url!r} still contains @fqrn@ or @org@; expand it for a repository")
    parts = urlsplit(expanded)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"server URL {url!r} has an invalid port number") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"server URL {url!r} is not an http(s) URL; write it as http://host[:port]/cvmfs/@fqrn@"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"server URL {url!r} must not have a query or fragment")
    return expanded


def parse_server_urls(text: str | Iterable[str] | None, fqrn: str) -> tuple[str, ...]:
    """Parse a ``CVMFS_SERVER_URL`` value (``;``-separated) into repository base URLs.

    Duplicates are dropped (first one wins); an empty list is a :class:`ConfigError`.
    """
    items = (text or "").split(";") if isinstance(text, str) or text is None else list(text)
    urls = [expand_server_url(u, fqrn) for u in items if u.strip()]
    if not urls:
        raise ConfigError(
            f"CVMFS_SERVER_URL is empty for {fqrn}: set it to the Stratum-1 servers, "
            "e.g. 'http://s1.example.org/cvmfs/@fqrn@;http://s1b.example.org/cvmfs/@fqrn@'"
        )
    return tuple(dict.fromkeys(urls))
