"""The service's TOML configuration: parsing, defaults, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rcds.errors import ConfigError
from rcds.service.config import (
    DEFAULT_MAX_UPLOAD_SIZE,
    ServiceConfig,
    TlsConfig,
    TokenIssuerConfig,
    example_toml,
    parse_size,
)

FULL = """
repositories = ["fifeuser1.opensciencegrid.org", "fifeuser2.opensciencegrid.org"]
prefix = "sw"
stamp_prefix = "ts"
base_dir = "state"
spool_dir = "/var/spool/rcds"
max_upload_size = "1GiB"
compression = "libdeflate:9"

[cleanup]
maxdays = 14
start_hour = 3

[listen]
host = "0.0.0.0"
port = 8443

[tls]
cert_file = "host.pem"
key_file = "host.key"
ca_dir = "/etc/grid-security/certificates"

[auth]
grid_mapfile = "grid-mapfile"
require_auth_on_loopback = true

[[auth.token_issuers]]
issuer = "https://cilogon.org/fermilab"
keys = "fermilab.jwks"
audience = "https://rcds01.fnal.gov"

[[auth.token_issuers]]
issuer = "https://wlcg.example.org"
keys = ["a.pem", "/etc/b.pem"]
audience = ["https://rcds01.fnal.gov", "https://rcds.fnal.gov"]
scope = "storage.create:/"

[acl]
alice = ["dune", "mu2e"]
"/dune/production" = ["dune"]
"*" = []

[replica]
partner_url = "https://rcds02.fnal.gov/"
pull_interval = 15.5
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "rcds.toml"
    path.write_text(FULL)
    cfg = ServiceConfig.load(path)
    assert cfg.source == str(path)
    assert cfg.repositories == ("fifeuser1.opensciencegrid.org", "fifeuser2.opensciencegrid.org")
    assert cfg.base_dir == tmp_path / "state"  # relative to the file's directory
    assert cfg.state_dir == tmp_path / "state" / "repos"
    assert cfg.spool_dir == Path("/var/spool/rcds")
    assert cfg.max_upload_size == 1024**3
    assert cfg.compression == "libdeflate:9"
    assert (cfg.cleanup.maxdays, cfg.cleanup.start_hour) == (14, 3)
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 8443)
    assert cfg.tls == TlsConfig(
        tmp_path / "host.pem", tmp_path / "host.key", Path("/etc/grid-security/certificates"), None
    )
    assert cfg.auth.grid_mapfile == tmp_path / "grid-mapfile"
    assert cfg.auth.require_auth_on_loopback is True
    assert cfg.auth.token_issuers == (
        TokenIssuerConfig(
            "https://cilogon.org/fermilab",
            (tmp_path / "fermilab.jwks",),
            ("https://rcds01.fnal.gov",),
            "compute.create",
        ),
        TokenIssuerConfig(
            "https://wlcg.example.org",
            (tmp_path / "a.pem", Path("/etc/b.pem")),
            ("https://rcds01.fnal.gov", "https://rcds.fnal.gov"),
            "storage.create:/",
        ),
    )
    assert dict(cfg.auth.acl) == {"alice": ("dune", "mu2e"), "/dune/production": ("dune",), "*": ()}
    assert cfg.replica.partner_url == "https://rcds02.fnal.gov"
    assert cfg.replica.pull_interval == 15.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.prefix = "x"  # type: ignore[misc]


def test_defaults(tmp_path: Path) -> None:
    cfg = ServiceConfig.default(tmp_path)
    assert cfg.repositories == ("user1.example.org", "user2.example.org")
    assert (cfg.prefix, cfg.stamp_prefix) == ("sw", "ts")
    assert cfg.state_dir == tmp_path / "repos" and cfg.spool_dir == tmp_path / "spool"
    assert cfg.max_upload_size == DEFAULT_MAX_UPLOAD_SIZE == 4 * 1024**3
    assert cfg.compression == "isal:2"
    assert (cfg.cleanup.maxdays, cfg.cleanup.start_hour) == (30, 2)
    assert (cfg.listen.host, cfg.listen.port) == ("127.0.0.1", 8080)
    assert cfg.tls is None
    assert cfg.auth.grid_mapfile is None and cfg.auth.token_issuers == ()
    assert cfg.auth.require_auth_on_loopback is False and dict(cfg.auth.acl) == {}
    assert cfg.replica.partner_url is None and cfg.replica.pull_interval == 30.0
    cfg.check_paths()  # nothing configured, nothing missing


def test_empty_file_equals_defaults_apart_from_paths(tmp_path: Path) -> None:
    cfg = ServiceConfig.loads("", relative_to=tmp_path)
    assert cfg.base_dir == Path("/var/lib/rcds")
    assert cfg.state_dir == Path("/var/lib/rcds/repos")
    default = ServiceConfig.default("/var/lib/rcds")
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(default, source="x")


def test_example_parses_and_documents_every_key(tmp_path: Path) -> None:
    text = example_toml()
    cfg = ServiceConfig.loads(text, source="example")
    assert cfg.tls is not None and cfg.tls.ca_dir == Path("/etc/grid-security/certificates")
    assert cfg.auth.token_issuers[0].scope == "compute.create"
    assert cfg.replica.partner_url == "https://rcds02.example.org"
    for key in [
        "repositories", "prefix", "stamp_prefix", "base_dir", "state_dir", "spool_dir",
        "max_upload_size", "maxdays", "start_hour", "host", "port", "cert_file", "key_file",
        "ca_dir", "ca_file", "grid_mapfile", "require_auth_on_loopback", "issuer", "keys",
        "audience", "scope", "[acl]", "partner_url", "pull_interval",
    ]:  # fmt: skip
        assert key in text, key
    assert sum(line.startswith("#") for line in text.splitlines()) > 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("4GiB", 4 * 1024**3),
        ("4 GiB", 4 * 1024**3),
        ("4g", 4 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("1.5KiB", 1536),
        ("100", 100),
        ("2TB", 2 * 1000**4),
        ("7 b", 7),
    ],
)
def test_parse_size(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "4 GB GB", "4 PiB", "-1", "0", 0, True, "1e9", "0.1"])
def test_parse_size_errors(text: int | str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("prefx = 'sw'", "prefx", "unknown key"),
        ("[cleanup]\nmaxday = 3", "cleanup.maxday", "unknown key"),
        ("repositories = []", "repositories", "non-empty"),
        ("repositories = ['noddot']", "repositories", "fully qualified"),
        ("repositories = ['a.b', 'a.b']", "repositories", "unique"),
        ("repositories = 'bad name.org'", "repositories", "fully qualified"),
        ("prefix = 'a/b'", "prefix", "one directory name"),
        ("prefix = '.sw'", "prefix", "one directory name"),
        ("stamp_prefix = 'sw'", "stamp_prefix", "must differ"),
        ("max_upload_size = 'lots'", "max_upload_size", "not a size"),
        ("max_upload_size = true", "max_upload_size", "number of bytes"),
        ("[cleanup]\nmaxdays = 0", "cleanup.maxdays", "integer >= 1"),
        ("[cleanup]\nmaxdays = '30'", "cleanup.maxdays", "integer"),
        ("[cleanup]\nstart_hour = 24", "cleanup.start_hour", "0..23"),
        ("[cleanup]\nstart_hour = true", "cleanup.start_hour", "0..23"),
        ("[listen]\nport = 70000", "listen.port", "0..65535"),
        ("[listen]\nhost = ''", "listen.host", "non-empty"),
        ("cleanup = 3", "cleanup", "must be a table"),
        ("[tls]\ncert_file = 'c'", "tls.key_file", "required"),
        ("[tls]\nkey_file = 'k'", "tls.cert_file", "required"),
        ("[tls]\ncert_file = 'c'\nkey_file = 3", "tls.key_file", "path"),
        ("[auth]\nrequire_auth_on_loopback = 'yes'", "auth.require_auth_on_loopback", "true or false"),
        ("[auth]\ntoken_issuers = 'x'", "auth.token_issuers", "array of tables"),
        ("[[auth.token_issuers]]\nkeys = 'k'\naudience = 'a'", "auth.token_issuers[0].issuer", "required"),
        ("[[auth.token_issuers]]\nissuer = 'http://x'\nkeys = 'k'\naudience = 'a'", "issuer", "https://"),
        (
            "[[auth.token_issuers]]\nissuer = 'https://x'\naudience = 'a'",
            "auth.token_issuers[0].keys",
            "required",
        ),
        ("[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = []\naudience = 'a'", "keys", "non-empty"),
        ("[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = 'k'", "audience", "required"),
        (
            "[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = 'k'\naudience = 'a'\nscope = 'a b'",
            "scope",
            "single",
        ),
        (
            "[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = 'k'\naudience = 'a'\nkid = 1",
            "[0].kid",
            "unknown",
        ),
        (
            "[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = 'k'\naudience = 'a'\n"
            "[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = 'k'\naudience = 'a'",
            "auth.token_issuers[1].issuer",
            "twice",
        ),
        ("[acl]\nalice = 'dune/x'", "acl.alice", "not a CID group"),
        ("[acl]\nalice = [1]", "acl.alice", "non-empty string"),
        ('[acl]\n"a b" = ["../x"]', 'acl."a b"', "not a CID group"),
        ("acl = 1", "acl", "must be a table"),
        ("[replica]\npartner_url = 'ftp://x'", "replica.partner_url", "http"),
        ("[replica]\npull_interval = 0", "replica.pull_interval", "seconds"),
        ("[replica]\npull_interval = true", "replica.pull_interval", "seconds"),
        ("compression = 'zstd:3'", "compression", "give LIBRARY:LEVEL, one of zlib:1-9"),
        ("compression = 'isal:7'", "compression", "isal levels are 0-3"),
        ("compression = 2", "compression", "non-empty string"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ServiceConfig.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert key in message and problem in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("prefix = \n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML: .*line 1"):
        ServiceConfig.load(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        ServiceConfig.load(tmp_path / "nope.toml")
    path.write_bytes(b"prefix = '\xff'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ServiceConfig.load(path)


def test_check_paths(tmp_path: Path) -> None:
    (tmp_path / "host.pem").write_text("x")
    (tmp_path / "host.key").write_text("x")
    (tmp_path / "certs").mkdir()
    (tmp_path / "k.jwks").write_text("{}")
    text = (
        "[tls]\ncert_file = 'host.pem'\nkey_file = 'host.key'\nca_dir = 'certs'\n"
        "[auth]\ngrid_mapfile = 'gm'\n"
        "[[auth.token_issuers]]\nissuer = 'https://x'\nkeys = ['k.jwks', 'gone.jwks']\naudience = 'a'\n"
    )
    cfg = ServiceConfig.loads(text, source="cfg.toml", relative_to=tmp_path)
    with pytest.raises(ConfigError, match=r"cfg.toml: auth.grid_mapfile: file .*gm does not exist"):
        cfg.check_paths()
    (tmp_path / "gm").write_text("")
    with pytest.raises(ConfigError, match=r"auth.token_issuers\[0\].keys: file .*gone.jwks"):
        cfg.check_paths()
    (tmp_path / "gone.jwks").write_text("{}")
    cfg.check_paths()
