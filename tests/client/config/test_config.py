"""Client configuration: shell-free parsing, layering, source tracking and typed settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcds.client.config.files import Source, parse_config_text
from rcds.client.config.settings import (
    BUILTIN,
    MB,
    OVERRIDE,
    ClientSettings,
    config_file_candidates,
    load_client_config,
)
from rcds.errors import ConfigError

FQRN = "sw.example.org"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def values(text: str, defined: dict[str, str] | None = None) -> dict[str, str]:
    return {a.key: a.value for a in parse_config_text(text, "t.conf", defined).assignments}


# -- parsing ------------------------------------------------------------------------------------


def test_comments_blank_lines_export_and_quotes() -> None:
    text = """
# a comment
   # indented comment

A=plain
export B="double quoted"
C='single $A quoted'
D=x#not-a-comment
E=value  # trailing comment
F="a"'b'c\\ d
G=
H=""
I="multi
line"
export J
K=1 L=2; M=3
N=one\\
two
O="tab\\tkept \\"q\\" \\$A \\\\"
"""
    v = values(text)
    assert v == {
        "A": "plain",
        "B": "double quoted",
        "C": "single $A quoted",
        "D": "x#not-a-comment",
        "E": "value",
        "F": "abc d",
        "G": "",
        "H": "",
        "I": "multi\nline",
        "K": "1",
        "L": "2",
        "M": "3",
        "N": "onetwo",
        "O": 'tab\\tkept "q" $A \\',
    }


def test_line_numbers_of_assignments() -> None:
    parsed = parse_config_text('A=1\n\nB="x\ny"\nC=3\n', "f.conf")
    assert [(a.key, a.source) for a in parsed.assignments] == [
        ("A", Source("f.conf", 1)),
        ("B", Source("f.conf", 3)),
        ("C", Source("f.conf", 5)),
    ]
    assert str(Source("f.conf", 5)) == "f.conf:5"


def test_expansion_of_defined_keys() -> None:
    v = values(
        "BASE=/srv\nA=$BASE/a\nB=${BASE}b\nC=\"$BASE/c\"\nD='$BASE'\nE=\\$BASE\nF=cost$\nG=$OUTER-x\n",
        {"OUTER": "out"},
    )
    assert v["A"] == "/srv/a"
    assert v["B"] == "/srvb"
    assert v["C"] == "/srv/c"
    assert v["D"] == "$BASE"
    assert v["E"] == "$BASE"
    assert v["F"] == "cost$"
    assert v["G"] == "out-x"


def test_undefined_expands_to_empty_with_warning() -> None:
    parsed = parse_config_text("A=x${NOPE}y\n", "f.conf")
    assert parsed.assignments[0].value == "xy"
    assert any("$NOPE is not defined" in w and "f.conf:1" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("A=$(hostname)\n", "command substitution"),
        ('A="$(id -u)"\n', "command substitution"),
        ("A=`hostname`\n", "backticks"),
        ('A="x`id`"\n', "backticks"),
        ("A=${B:-default}\n", "${NAME}"),
        ("A=$1\n", "special shell parameter"),
        ("A=$$\n", "special shell parameter"),
        ("A=1 rm -rf /\n", "unsupported shell syntax after an assignment"),
        ("A=x|y\n", "unsupported shell syntax '|'"),
        ("A=x>y\n", "unsupported shell syntax '>'"),
        ("A='open\n", "unterminated single quote"),
        ('A="open\n', "unterminated double quote"),
        ("A = 1\n", "no spaces are allowed around '='"),
    ],
)
def test_shell_only_syntax_is_rejected(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_text("OK=1\n" + text, "bad.conf")
    assert needle in str(err.value)
    assert "bad.conf:2" in str(err.value)


def test_quoted_operators_are_fine() -> None:
    v = values("A=\"http://a/cvmfs/@fqrn@;http://b|http://c\"\nB='$(not run)'\n")
    assert v["A"] == "http://a/cvmfs/@fqrn@;http://b|http://c"
    assert v["B"] == "$(not run)"


def test_non_assignment_statements_warn_or_fail_when_strict() -> None:
    text = 'if [ "$X" = "y" ]; then\n  A=1\nelse\n  A=2\nfi\n'
    parsed = parse_config_text(text, "if.conf")
    assert [a.value for a in parsed.assignments] == ["1", "2"]
    assert len(parsed.warnings) == 3
    assert "if.conf:1" in parsed.warnings[0]
    with pytest.raises(ConfigError, match=r"if\.conf:1: ignored shell statement"):
        parse_config_text(text, "if.conf", strict=True)


# -- layering -----------------------------------------------------------------------------------


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    e = tmp_path / "etc"
    write(e / "default.conf", "CVMFS_HTTP_PROXY=DIRECT\nLAYER=default.conf\nBASE=/base\n")
    write(e / "default.d" / "20-b.conf", "LAYER=20-b\nFROM_D=b\n")
    write(e / "default.d" / "10-a.conf", "LAYER=10-a\nFROM_D=a\n")
    write(e / "default.d" / "99-ignored.txt", "LAYER=ignored\n")
    write(e / "default.local", "LAYER=default.local\n")
    write(e / "domain.d" / "example.org.conf", 'LAYER=domain\nCVMFS_SERVER_URL="http://s1/cvmfs/@fqrn@"\n')
    write(e / "domain.d" / "example.org.local", "LAYER=domain.local\n")
    write(e / "config.d" / f"{FQRN}.conf", "\nLAYER=repo\nCVMFS_CACHE_BASE=$BASE/cache\n")
    write(e / "config.d" / f"{FQRN}.local", "# local\n\nLAYER=repo.local\n")
    return e


def test_layer_order_and_sources(etc: Path) -> None:
    cfg = load_client_config(FQRN, etc_dir=etc)
    assert cfg["LAYER"] == "repo.local"
    assert cfg.source("LAYER") == Source(str(etc / "config.d" / f"{FQRN}.local"), 3)
    assert [a.value for a in cfg.history("LAYER")] == [
        "default.conf",
        "10-a",
        "20-b",
        "default.local",
        "domain",
        "domain.local",
        "repo",
        "repo.local",
    ]
    assert cfg["FROM_D"] == "b"
    assert cfg["CVMFS_CACHE_BASE"] == "/base/cache"  # expansion across files
    assert cfg.source("CVMFS_QUOTA_LIMIT") == BUILTIN
    assert cfg.files_read == (
        etc / "default.conf",
        etc / "default.d" / "10-a.conf",
        etc / "default.d" / "20-b.conf",
        etc / "default.local",
        etc / "domain.d" / "example.org.conf",
        etc / "domain.d" / "example.org.local",
        etc / "config.d" / f"{FQRN}.conf",
        etc / "config.d" / f"{FQRN}.local",
    )
    explained = cfg.explain()
    assert [k for k, _, _ in explained] == sorted(cfg.keys())
    assert ("LAYER", "repo.local", Source(str(etc / "config.d" / f"{FQRN}.local"), 3)) in explained
    assert ("CVMFS_QUOTA_LIMIT", "4000", BUILTIN) in explained


def test_other_repository_skips_foreign_files(etc: Path) -> None:
    cfg = load_client_config("other.example.com", etc_dir=etc)
    assert cfg["LAYER"] == "default.local"
    cfg = load_client_config(None, etc_dir=etc)
    assert cfg["LAYER"] == "default.local"
    undotted = config_file_candidates("local", etc)
    assert etc / "config.d" / "local.conf" in undotted
    assert not any("domain.d" in str(p) for p in undotted)


def test_extra_files_and_overrides_win(etc: Path, tmp_path: Path) -> None:
    extra1 = write(tmp_path / "x1.conf", "LAYER=x1\nX=1\n")
    extra2 = write(tmp_path / "x2.conf", "LAYER=x2\n")
    cfg = load_client_config(FQRN, etc_dir=etc, extra_files=[extra1, extra2], overrides={"X": "$LAYER"})
    assert cfg["LAYER"] == "x2"
    assert cfg["X"] == "$LAYER"  # overrides are literal
    assert cfg.source("X") == OVERRIDE
    with pytest.raises(ConfigError, match="does not exist"):
        load_client_config(FQRN, etc_dir=etc, extra_files=[tmp_path / "missing.conf"])
    with pytest.raises(ConfigError, match="not a valid parameter name"):
        load_client_config(FQRN, etc_dir=etc, overrides={"BAD KEY": "1"})


def test_bad_files_and_names(tmp_path: Path) -> None:
    write(tmp_path / "default.conf", "").write_bytes(b"A=\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_client_config(None, etc_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a repository name"):
        load_client_config("../../etc/passwd", etc_dir=tmp_path / "none")


# -- typed settings -----------------------------------------------------------------------------


def settings(tmp_path: Path, text: str = "", fqrn: str = FQRN, **overrides: str) -> ClientSettings:
    etc = tmp_path / "etc"
    write(etc / "default.local", text)
    return load_client_config(fqrn, etc_dir=etc, overrides=overrides).settings()


def test_stock_defaults(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.server_urls == ()
    assert s.http_proxy == "" and s.fallback_proxy == ""
    assert s.cache_base == Path("/var/lib/cvmfs")
    assert s.cache_dir == Path("/var/lib/cvmfs/shared")
    assert s.quota_limit_mb == 4000 and s.quota_bytes == 4000 * MB
    assert s.alien_cache is None
    assert s.max_ttl_minutes == 0 and s.max_ttl_seconds is None
    assert (s.timeout, s.timeout_direct, s.max_retries) == (5, 10, 1)
    assert (s.backoff_init, s.backoff_max) == (2, 10)
    assert (s.proxy_reset_after, s.host_reset_after) == (300, 1800)
    assert s.public_keys == ()


def test_values_and_url_substitution(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        'CVMFS_SERVER_URL=" http://a/cvmfs/@fqrn@/ ; ;http://b:8000/@org@/cvmfs/@fqrn@"\n'
        'CVMFS_HTTP_PROXY="http://p1:3128|http://p2:3128;DIRECT"\n'
        "CVMFS_FALLBACK_PROXY=http://fb:3128\n"
        "CVMFS_QUOTA_LIMIT=-1\nCVMFS_MAX_TTL=5\nCVMFS_TIMEOUT=0.5\nCVMFS_MAX_RETRIES=3\n"
        "CVMFS_ALIEN_CACHE=/site/alien\nCVMFS_SHARED_CACHE=no\nCVMFS_CACHE_BASE=/c\n",
    )
    assert s.server_urls == ("http://a/cvmfs/sw.example.org", "http://b:8000/sw/cvmfs/sw.example.org")
    assert s.http_proxy == "http://p1:3128|http://p2:3128;DIRECT"
    assert s.fallback_proxy == "http://fb:3128"
    assert s.quota_bytes is None
    assert s.max_ttl_seconds == 300
    assert s.timeout == 0.5 and s.max_retries == 3
    assert s.alien_cache == Path("/site/alien")
    assert s.cache_dir == Path("/c/sw.example.org")
    assert settings(tmp_path, "CVMFS_CACHE_DIR=/explicit\n").cache_dir == Path("/explicit")


def test_empty_value_means_default(tmp_path: Path) -> None:
    s = settings(tmp_path, "CVMFS_QUOTA_LIMIT=\nCVMFS_TIMEOUT=''\n")
    assert s.quota_limit_mb == 4000 and s.timeout == 5


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("CVMFS_QUOTA_LIMIT=4GB", "size in MB"),
        ("CVMFS_QUOTA_LIMIT=-2", "size in MB"),
        ("CVMFS_QUOTA_LIMIT=0", "usable cache size"),
        ("CVMFS_MAX_TTL=-1", "minutes"),
        ("CVMFS_TIMEOUT=soon", "number of seconds"),
        ("CVMFS_TIMEOUT_DIRECT=-3", "non-negative"),
        ("CVMFS_BACKOFF_MAX=inf", "non-negative"),
        ("CVMFS_MAX_RETRIES=1.5", "retries"),
        ("CVMFS_HOST_RESET_AFTER=x", "seconds"),
        ("CVMFS_SHARED_CACHE=maybe", "yes or no"),
    ],
)
def test_bad_values_name_key_value_and_file(tmp_path: Path, line: str, needle: str) -> None:
    key, value = line.split("=", 1)
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, "# header\n" + line + "\n")
    msg = str(err.value)
    assert key in msg and repr(value) in msg and needle in msg
    assert f"{tmp_path / 'etc' / 'default.local'}:2" in msg


def test_bad_override_is_attributed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="from the overrides"):
        settings(tmp_path, CVMFS_MAX_RETRIES="many")


def test_settings_need_a_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repository name"):
        load_client_config(None, etc_dir=tmp_path).settings()


def test_public_keys(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    for name in ("b.pub", "a.pub", "notes.txt"):
        write(etc / "keys" / name, "k")
    (etc / "keys" / "sub.pub").mkdir()
    cfg = load_client_config(FQRN, etc_dir=etc)
    assert cfg.settings().public_keys == (etc / "keys" / "a.pub", etc / "keys" / "b.pub")
    write(tmp_path / "other" / "z.pub", "k")
    s = settings(tmp_path, f"CVMFS_KEYS_DIR={tmp_path / 'other'}\n")
    assert s.public_keys == (tmp_path / "other" / "z.pub",)
    s = settings(tmp_path, "CVMFS_PUBLIC_KEY=/k/one.pub::/k/two.pub\nCVMFS_KEYS_DIR=/nowhere\n")
    assert s.public_keys == (Path("/k/one.pub"), Path("/k/two.pub"))
    assert settings(tmp_path, "CVMFS_KEYS_DIR=/nowhere\n").public_keys == ()
