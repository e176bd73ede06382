"""CID validation: today's rules (rcds-today.md 2.3) made strict."""

from __future__ import annotations

import pytest

from rcds.errors import ConfigError, InputError
from rcds.service.cid import SAFE_CHARACTERS, Cid, validate_cid

SHA256 = "bf6a15b4238b72f82d6e1f0a2c9c8d0e4b7a6f5e3d2c1b0a9f8e7d6c5b4a3921"
SHA1 = "0a4d55a8d778e5022fab701977c5d840bbc486d0"

GOOD = [
    (f"dune/{SHA256}", ("dune", SHA256)),
    (f"mu2e/{SHA1}", ("mu2e", SHA1)),
    (SHA256, (SHA256,)),
    ("fermilab/abc", ("fermilab", "abc")),
    ("gm2/ABCDEF0123", ("gm2", "ABCDEF0123")),
    ("a", ("a",)),
    ("dune/name-with_dash.and.dots", ("dune", "name-with_dash.and.dots")),
    ("dune/x=1@host", ("dune", "x=1@host")),
    ("sbnd/v1..2", ("sbnd", "v1..2")),  # ".." inside a name is not a component
    ("a" * 100 + "/" + "b" * 154, ("a" * 100, "b" * 154)),  # exactly 255 characters
]

BAD = [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("/foo", "absolute"),
    ("dune/", "end with"),
    ("dune//abc", "empty component"),
    ("..", "'..' component"),
    ("dune/..", "'..' component"),
    ("./dune", "'.' component"),
    ("dune/.", "'.' component"),
    ("../x", "'..' component"),
    (".hidden", "start with '.'"),
    ("dune/.cvmfscatalog", "start with '.'"),
    ("-rf/abc", "start with '-'"),
    ("dune/abc'; rm -rf /", "quote"),
    ('dune/a"b', "quote"),
    ("dune\\abc", "backslash"),
    ("dune/a b", "whitespace"),
    ("dune/a\tb", "control character"),
    ("dune/a\nb", "control character"),
    ("dune/a\x00b", "U+0000"),
    ("dune/a\x7fb", "U+007F"),
    ("dune/a\x85b", "control character"),
    ("dune/a\u00a0b", "whitespace U+00A0"),
    ("dune/caf\u00e9", "non-ASCII"),
    ("dune/a,b", "character ','"),
    ("dune/a+b", "character '+'"),
    ("dune/a;b", "character ';'"),
    ("dune/$HOME", "character '$'"),
    ("dune/a*b", "character '*'"),
    ("dune/a:b", "character ':'"),
    ("a/b/c", "at most one slash"),
    ("x" * 256, "too long"),
    ("dune/" + "a" * 251, "too long"),
]


@pytest.mark.parametrize(("cid", "components"), GOOD)
def test_good_cids(cid: str, components: tuple[str, ...]) -> None:
    c = validate_cid(cid)
    assert c == Cid(cid, components)
    assert str(c) == cid
    assert c.group == components[0]
    assert c.name == components[-1]
    assert c.depth == len(components)


@pytest.mark.parametrize(("cid", "reason"), BAD)
def test_bad_cids(cid: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        validate_cid(cid)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message and "\x00" not in message  # one printable line, usable as a 400 body
    assert len(message) < 400


def test_cids_today_accepts_but_we_refuse_are_explained() -> None:
    # Today's server lets these through (2.3); each gets its own reason here.
    reasons = set()
    for cid in ["/etc/x", "dune/a,b", "dune/a b", "dune/x\n"]:
        with pytest.raises(InputError) as info:
            validate_cid(cid)
        reasons.add(str(info.value).split(":")[0])
    assert len(reasons) >= 3


def test_depth_and_length_limits() -> None:
    assert validate_cid("a/b/c", max_depth=3).components == ("a", "b", "c")
    with pytest.raises(InputError, match="no slash allowed"):
        validate_cid("a/b", max_depth=1)
    with pytest.raises(InputError, match="at most 2 slashes"):
        validate_cid("a/b/c/d", max_depth=3)
    assert validate_cid("abc", max_length=3).value == "abc"
    with pytest.raises(InputError, match="too long"):
        validate_cid("abcd", max_length=3)
    with pytest.raises(ConfigError):
        validate_cid("a", max_depth=0)


def test_message_truncates_long_bad_cid() -> None:
    with pytest.raises(InputError) as info:
        validate_cid("a" * 200 + " ", max_length=1000)
    assert "..." in str(info.value) and len(str(info.value)) < 300
    assert info.value.member == "a" * 200 + " "


def test_non_string_rejected() -> None:
    with pytest.raises(InputError, match="must be a string"):
        validate_cid(b"dune/abc")  # type: ignore[arg-type]


def test_safe_set_is_ascii_only() -> None:
    assert all(ord(c) < 128 for c in SAFE_CHARACTERS)
    assert not set("/'\"\\ ,+;\t") & SAFE_CHARACTERS


def test_cid_is_frozen_and_hashable() -> None:
    c = validate_cid("dune/abc")
    assert {c: 1}[validate_cid("dune/abc")] == 1
    with pytest.raises(AttributeError):
        c.value = "x"  # type: ignore[misc]
