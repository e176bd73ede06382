"""Parsing of CVMFS_SERVER_URL, CVMFS_HTTP_PROXY, CVMFS_FALLBACK_PROXY and the tuning parameters."""

from __future__ import annotations

import pytest

from rcds.errors import ConfigError
from rcds.net import DIRECT, NetSettings, ProxyConfig, Timeouts, parse_server_urls
from rcds.net.proxies import check_server_url, normalize_proxy, org_of, parse_proxy_groups


def test_groups_and_load_balanced_proxies() -> None:
    cfg = ProxyConfig.parse(
        "http://p1.site:3128|http://p2.site:3128;http://p3.region:3128|http://p4.region:3128"
    )
    assert cfg.groups == (
        ("http://p1.site:3128", "http://p2.site:3128"),
        ("http://p3.region:3128", "http://p4.region:3128"),
    )
    assert cfg.fallback_groups == ()
    assert cfg.proxy_count == 4


def test_direct_as_a_group_and_alone() -> None:
    assert ProxyConfig.parse("http://proxy1:8080|http://proxy2:8080;DIRECT").groups == (
        ("http://proxy1:8080", "http://proxy2:8080"),
        (DIRECT,),
    )
    assert ProxyConfig.parse("DIRECT").groups == ((DIRECT,),)
    assert ProxyConfig.parse(" direct ").groups == ((DIRECT,),)
    assert ProxyConfig.direct().all_groups == ((DIRECT,),)


def test_fallback_removes_every_direct() -> None:
    cfg = ProxyConfig.parse("http://a:3128|DIRECT;DIRECT", "http://fb1:3128;DIRECT|http://fb2:3128")
    assert cfg.groups == (("http://a:3128",),)
    assert cfg.fallback_groups == (("http://fb1:3128",), ("http://fb2:3128",))
    assert cfg.all_groups == cfg.groups + cfg.fallback_groups
    # Only DIRECT regularly, with a fallback: the fallback list is all that is left.
    only_fb = ProxyConfig.parse("DIRECT", "http://fb:3128")
    assert only_fb.groups == ()
    assert only_fb.all_groups == (("http://fb:3128",),)


def test_empty_or_blank_fallback_keeps_direct() -> None:
    assert ProxyConfig.parse("DIRECT", "").groups == ((DIRECT,),)
    assert ProxyConfig.parse("DIRECT", "  ").groups == ((DIRECT,),)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_proxy_setting_is_a_config_error(value: str | None) -> None:
    with pytest.raises(ConfigError, match=r"CVMFS_HTTP_PROXY is empty.*DIRECT"):
        ProxyConfig.parse(value, "http://fb:3128")


def test_fallback_with_only_direct_is_an_error() -> None:
    with pytest.raises(ConfigError, match="CVMFS_FALLBACK_PROXY"):
        ProxyConfig.parse("http://a:3128", "DIRECT")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("squid.example.org:3128", "http://squid.example.org:3128"),
        ("HTTP://Squid:3128/", "http://squid:3128"),
        ("https://p:443", "https://p:443"),
        ("http://user:pw@p:3128", "http://user:pw@p:3128"),
        ("http://[::1]:3128", "http://[::1]:3128"),
    ],
)
def test_proxy_normalization(entry: str, expected: str) -> None:
    assert normalize_proxy(entry) == expected


@pytest.mark.parametrize("entry", ["auto", "ftp://p:21", "http://:3128", "http://p:99999", "http://p:3128/x"])
def test_bad_proxy_entries(entry: str) -> None:
    with pytest.raises(ConfigError):
        ProxyConfig.parse(entry)


def test_stray_separators_and_duplicates_are_ignored() -> None:
    assert parse_proxy_groups(";http://a:1||http://a:1;;") == (("http://a:1",),)


def test_from_params() -> None:
    cfg = ProxyConfig.from_params({"CVMFS_HTTP_PROXY": "http://a:1", "CVMFS_FALLBACK_PROXY": "http://b:2"})
    assert cfg.all_groups == (("http://a:1",), ("http://b:2",))
    with pytest.raises(ConfigError):
        ProxyConfig.from_params({})


def test_server_urls_substitute_fqrn_and_org() -> None:
    text = "http://s1a.example.org/cvmfs/@fqrn@;http://s1b.example.org:8000/cvmfs/@org@/@fqrn@/;"
    assert parse_server_urls(text, "atlas.cern.ch") == (
        "http://s1a.example.org/cvmfs/atlas.cern.ch",
        "http://s1b.example.org:8000/cvmfs/atlas/atlas.cern.ch",
    )
    assert org_of("sft.cern.ch") == "sft"
    assert parse_server_urls(["http://a/cvmfs/@fqrn@", "http://a/cvmfs/@fqrn@"], "x.y") == (
        "http://a/cvmfs/x.y",
    )


@pytest.mark.parametrize("text", [None, "", " ; "])
def test_empty_server_list_is_an_error(text: str | None) -> None:
    with pytest.raises(ConfigError, match="CVMFS_SERVER_URL is empty"):
        parse_server_urls(text, "x.example.org")


@pytest.mark.parametrize(
    "url", ["s1.example.org/cvmfs/x", "ftp://s1/cvmfs/x", "http://s1:port/x", "http://s/x?q=1"]
)
def test_bad_server_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_server_urls(url, "x.example.org")


def test_unexpanded_server_url_is_rejected() -> None:
    with pytest.raises(ConfigError, match="@fqrn@"):
        check_server_url("http://s1/cvmfs/@fqrn@")


def test_settings_defaults_are_stock() -> None:
    s = NetSettings()
    assert s.timeout == Timeouts(5, 5)
    assert s.timeout_direct == Timeouts(10, 10)
    assert (s.low_speed_limit, s.max_retries, s.backoff_init, s.backoff_max) == (1024, 1, 2, 10)
    assert (s.proxy_reset_after, s.host_reset_after) == (300, 1800)
    assert s.user_agent.startswith("rcds/")
    assert s.timeouts_for(True) is s.timeout
    assert s.timeouts_for(False) is s.timeout_direct


def test_settings_from_params() -> None:
    s = NetSettings.from_params(
        {
            "CVMFS_TIMEOUT": "3",
            "CVMFS_TIMEOUT_DIRECT": "7.5",
            "CVMFS_LOW_SPEED_LIMIT": "0",
            "CVMFS_MAX_RETRIES": "3",
            "CVMFS_BACKOFF_INIT": "1",
            "CVMFS_BACKOFF_MAX": "4",
            "CVMFS_PROXY_RESET_AFTER": "60",
            "CVMFS_HOST_RESET_AFTER": "0",
        }
    )
    assert s.timeout == Timeouts(3, 3)
    assert s.timeout_direct == Timeouts(7.5, 7.5)
    assert (s.low_speed_limit, s.max_retries, s.backoff_init, s.backoff_max) == (0, 3, 1, 4)
    assert (s.proxy_reset_after, s.host_reset_after) == (60, 0)


@pytest.mark.parametrize(
    "params", [{"CVMFS_TIMEOUT": "fast"}, {"CVMFS_MAX_RETRIES": "-1"}, {"CVMFS_TIMEOUT_DIRECT": "0"}]
)
def test_bad_settings(params: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        NetSettings.from_params(params)
    with pytest.raises(ConfigError):
        Timeouts(0, 1)


def test_fetcher_from_params() -> None:
    from rcds.net import Fetcher

    f = Fetcher.from_params(
        {
            "CVMFS_SERVER_URL": "http://s1.example.org/cvmfs/@fqrn@;http://s2.example.org:8000/cvmfs/@fqrn@",
            "CVMFS_HTTP_PROXY": "http://p1:3128|http://p2:3128;DIRECT",
            "CVMFS_MAX_RETRIES": "2",
        },
        "sw.example.org",
    )
    assert f.servers == (
        "http://s1.example.org/cvmfs/sw.example.org",
        "http://s2.example.org:8000/cvmfs/sw.example.org",
    )
    assert f.settings.max_retries == 2
    assert [(r.role, r.url, r.group) for r in f.status()][2:] == [
        ("proxy", "http://p1:3128", 0),
        ("proxy", "http://p2:3128", 0),
        ("proxy", DIRECT, 1),
    ]
    assert f.url_for(f.servers[0], "/data/ab/cd") == "http://s1.example.org/cvmfs/sw.example.org/data/ab/cd"
    with pytest.raises(ConfigError, match="CVMFS_SERVER_URL"):
        Fetcher.from_params({"CVMFS_HTTP_PROXY": "DIRECT"}, "sw.example.org")
    with pytest.raises(ConfigError, match="CVMFS_HTTP_PROXY"):
        Fetcher.from_params({"CVMFS_SERVER_URL": "http://s1/cvmfs/@fqrn@"}, "sw.example.org")
