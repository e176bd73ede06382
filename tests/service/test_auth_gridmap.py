"""The grid-mapfile: parsing, DN normalisation, reload and revocation by removal."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from rcds.errors import ConfigError
from rcds.service.auth.gridmap import GridMap, normalize_dn, parse_gridmap

SAMPLE = r"""
# grid-mapfile for tests
"/DC=org/DC=example/O=Test/CN=Alice Smith" alice
"/DC=org/DC=example/O=Test/CN=Bob \"The Builder\" Jones"   bob,builders , ops
   "/DC=org/DC=example/O=Test/CN=Back\\slash" carol
/DC=org/DC=example/CN=nospace dave
"/DC=org/DC=example/CN=No Account"
"/DC=org/DC=example/CN=Robot/Email=robot@example.org" robot
"/DC=org/DC=example/CN=Jos\xC3\xA9" jose
"/DC=org/DC=example/CN=host/www.example.org" www
"/DC=org/DC=example/O=Test/CN=Alice Smith" alice2,alice
"/DC=org/DC=example/CN=unterminated alice
not-a-dn account
"/DC=org/CN=bad"account
"/DC=org/CN=spaces in account" a b
"""


def test_parse() -> None:
    m = parse_gridmap(SAMPLE)
    assert m["/DC=org/DC=example/O=Test/CN=Alice Smith"] == ("alice", "alice2")  # duplicates merged
    assert m['/DC=org/DC=example/O=Test/CN=Bob "The Builder" Jones'] == ("bob", "builders", "ops")
    assert m["/DC=org/DC=example/O=Test/CN=Back\\slash"] == ("carol",)
    assert m["/DC=org/DC=example/CN=nospace"] == ("dave",)
    assert m["/DC=org/DC=example/CN=No Account"] == ()
    assert m["/DC=org/DC=example/CN=Robot/emailAddress=robot@example.org"] == ("robot",)
    assert m["/DC=org/DC=example/CN=Jos\\xC3\\xA9"] == ("jose",)  # OpenSSL escapes kept verbatim
    assert m["/DC=org/DC=example/CN=host/www.example.org"] == ("www",)
    assert len(m) == 8  # the four malformed lines are skipped


def test_malformed_lines_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parse_gridmap(SAMPLE, "gm")
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"gm:{n}: skipping malformed grid-mapfile line" for n in (12, 13, 14, 15)
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("/DC=org/CN=Robot/Email=r@x.org", "/DC=org/CN=Robot/emailAddress=r@x.org"),
        ("/DC=org/CN=Robot/E=r@x.org", "/DC=org/CN=Robot/emailAddress=r@x.org"),
        ("/DC=org/USERID=alice/CN=A", "/DC=org/UID=alice/CN=A"),
        ("/DC=org/CN=host\\/www.example.org", "/DC=org/CN=host/www.example.org"),  # OpenSSL 3 escaping
        ("/DC=org/CN=a\\+b", "/DC=org/CN=a+b"),
    ],
)
def test_normalize_dn(a: str, b: str) -> None:
    assert normalize_dn(a) == normalize_dn(b)


def test_lookup_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "grid-mapfile"
    path.write_text(SAMPLE)
    gm = GridMap(path)
    alice = "/DC=org/DC=example/O=Test/CN=Alice Smith"
    assert gm.account(alice) == "alice"
    assert alice in gm
    assert gm.accounts("/DC=org/DC=example/CN=No Account") == ()
    assert gm.account("/DC=org/DC=example/CN=No Account") is None
    assert "/DC=org/DC=example/CN=No Account" in gm
    assert gm.account("/DC=org/DC=example/CN=Robot/emailAddress=robot@example.org") == "robot"
    assert gm.accounts("/DC=org/DC=example/CN=Mallory") is None
    assert 42 not in gm

    # revoked by removal: rewrite without Alice; the next lookup refuses her
    path.write_text('"/DC=org/DC=example/CN=nospace" dave\n')
    assert gm.accounts(alice) is None
    assert gm.account("/DC=org/DC=example/CN=nospace") == "dave"

    # an atomic replace (new inode) is noticed as well, even with the same size and mtime
    st = path.stat()
    tmp = tmp_path / "gm.new"
    tmp.write_text('"/DC=org/DC=example/CN=nospace" erin\n')
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp.replace(path)
    assert gm.account("/DC=org/DC=example/CN=nospace") == "erin"


def test_unreadable_later_keeps_previous(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "grid-mapfile"
    path.write_text('"/DC=org/CN=A" a\n')
    gm = GridMap(path)
    path.unlink()
    with caplog.at_level(logging.ERROR):
        assert gm.account("/DC=org/CN=A") == "a"
    assert "keeping the previous contents" in caplog.text


def test_missing_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load grid-mapfile"):
        GridMap(tmp_path / "nope")


def test_min_interval(tmp_path: Path) -> None:
    path = tmp_path / "grid-mapfile"
    path.write_text('"/DC=org/CN=A" a\n')
    clock = [100.0]
    gm = GridMap(path, min_interval=60, clock=lambda: clock[0])
    path.write_text('"/DC=org/CN=A" changed\n')
    assert gm.account("/DC=org/CN=A") == "a"  # not re-checked yet
    clock[0] += 61
    assert gm.account("/DC=org/CN=A") == "changed"
