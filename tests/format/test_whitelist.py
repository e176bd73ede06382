"""The whitelist ``.cvmfswhitelist`` (reference sections 4.3, 4.4), including the stock-published fixtures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError
from rcds.format import keys, signed, whitelist
from rcds.format.hashes import Algorithm, ContentHash

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
NAME = "repo.example.org"
FP = "89:D3:E5:39:62:4D:3D:D8:CF:E1:2E:8C:BB:55:83:A2:CE:DD:4A:39"
FP2 = "C7:D1:94:30:DA:7F:83:A5:13:76:26:BF:57:CD:35:C3:A3:A9:5E:11"
UTC = dt.UTC


def _at(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def master() -> rsa.RSAPrivateKey:
    return keys.generate_key()


@pytest.fixture(scope="module")
def other_master() -> rsa.RSAPrivateKey:
    return keys.generate_key()


def _wl(**changes: object) -> whitelist.Whitelist:
    fields: dict[str, object] = {
        "created": _at("20291201120000"),
        "expires": _at("20300101120000"),
        "repository_name": NAME,
        "fingerprints": (FP,),
    }
    fields.update(changes)
    return whitelist.Whitelist(**fields)  # type: ignore[arg-type]


def _sign_body(body: bytes, key: rsa.RSAPrivateKey, algo: Algorithm = Algorithm.SHA1) -> bytes:
    return signed.join(body, algo, lambda h: keys.sign_raw(key, h.encode()))


# -- serialization ------------------------------------------------------------------------------


def test_body_format() -> None:
    body = _wl(fingerprints=(FP, FP2)).body()
    assert body == f"20291201120000\nE20300101120000\nN{NAME}\n{FP}\n{FP2}\n".encode()
    lines = body.decode().split("\n")
    assert len(lines[0]) == 14
    assert len(lines[1]) == 15


def test_body_converts_to_utc() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    wl = _wl(created=dt.datetime(2030, 1, 1, 13, 0, 5, tzinfo=cet), expires=dt.datetime(2030, 2, 1, 0, 30))
    assert wl.body().startswith(b"20300101120005\nE20300201003000\n")


def test_sign_format(master: rsa.RSAPrivateKey) -> None:
    wl = _wl()
    data = wl.sign(master)
    body = wl.body()
    hash_string = ContentHash.of(body).hex
    assert data == body + b"--\n" + hash_string.encode() + b"\n" + keys.sign_raw(master, hash_string.encode())
    shake = wl.sign(master, Algorithm.SHAKE128)
    assert shake.split(b"\n--\n")[1].split(b"\n")[0] == ContentHash.of(body, Algorithm.SHAKE128).hex.encode()


@pytest.mark.parametrize("algo", list(Algorithm))
def test_round_trip(master: rsa.RSAPrivateKey, algo: Algorithm) -> None:
    wl = _wl(fingerprints=(FP, FP2 + "-SHAKE128"))
    parsed = whitelist.parse(wl.sign(master, algo))
    assert parsed.whitelist == wl
    parsed.verify([master.public_key()], NAME, now=_at("20291215000000"))


# -- expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires", "now", "expired"),
    [
        ("20300101120000", "20300101115959", False),
        ("20300101120000", "20300101115900", False),
        ("20300101120000", "20300101120000", True),
        ("20300101120000", "20300101120001", True),
        ("20300101123456", "20300101115959", False),
        ("20300101123456", "20300101120000", True),  # minutes and seconds of E are ignored
        ("20300101123456", "20300101123455", True),
        ("20300101120000", "20291231235959", False),
        ("20300101120000", "20300102000000", True),
        ("20300101000000", "20291231230000", False),
        ("20300101000000", "20300101000000", True),
    ],
)
def test_expiry_hour_granularity(expires: str, now: str, expired: bool) -> None:
    wl = _wl(expires=_at(expires))
    assert wl.is_expired(_at(now)) is expired


def test_expiry_naive_and_aware_now() -> None:
    wl = _wl(expires=_at("20300101120000"))
    assert not wl.is_expired(dt.datetime(2030, 1, 1, 11, 59))  # naive = UTC
    assert wl.is_expired(dt.datetime(2030, 1, 1, 12, 0))
    # 12:30 at UTC+1 is 11:30 UTC
    assert not wl.is_expired(dt.datetime(2030, 1, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))))


def test_expired_whitelist_refused(master: rsa.RSAPrivateKey) -> None:
    parsed = whitelist.parse(_wl().sign(master))
    parsed.verify([master.public_key()], NAME, now=_at("20300101115959"))
    with pytest.raises(IntegrityError, match="expired") as exc:
        parsed.verify([master.public_key()], NAME, now=_at("20300101120000"))
    assert exc.value.what == ".cvmfswhitelist"
    # without ``now`` the current time is used
    past = whitelist.parse(_wl(created=_at("20200101000000"), expires=_at("20200201000000")).sign(master))
    with pytest.raises(IntegrityError, match="expired"):
        past.verify([master.public_key()], NAME)


# -- fingerprint lines --------------------------------------------------------------------------------


def test_fingerprint_lines_with_comments_and_unknown_lines(master: rsa.RSAPrivateKey) -> None:
    lowercase_plain = FP2.replace(":", "").lower()
    body = (
        f"20291201120000\nE20300101120000\nN{NAME}\nVpkcs7\nWcachain\n"
        f"{FP} # the current certificate\n"
        f"{lowercase_plain}\t#tab comment\n"
        "# a comment line\n"
        "AB:CD:EF\n"  # too short to be a hash
        "garbage line here\n"
        f"{'11:' * 19}11-RMD160#no space\n"
    ).encode()
    parsed = whitelist.parse(_sign_body(body, master))
    parsed.verify([master.public_key()], NAME, now=_at("20291215000000"))
    wl = parsed.whitelist
    assert len(wl.fingerprints) == 3
    assert wl.lists(FP)
    assert wl.lists(FP.lower())
    assert wl.lists(FP2)
    assert wl.lists(("11:" * 19) + "11-RMD160")
    assert not wl.lists(("11:" * 19) + "11")  # same digest, different algorithm
    assert not wl.lists(("11:" * 19) + "11-SHAKE128")
    assert not wl.lists("AB:CD:EF")
    assert not wl.lists("Vpkcs7")
    assert not wl.lists("00:" * 19 + "00")


def test_lists_exact_fingerprint_only() -> None:
    wl = _wl(fingerprints=(FP,))
    assert wl.lists(FP)
    assert wl.lists(FP + " # comment")
    assert not wl.lists(FP[:-1] + "8")
    assert not wl.lists(FP + "-SHAKE128")


# -- signature, name and header ----------------------------------------------------------------------


def test_wrong_master_key_refused(master: rsa.RSAPrivateKey, other_master: rsa.RSAPrivateKey) -> None:
    parsed = whitelist.parse(_wl().sign(other_master))
    now = _at("20291215000000")
    with pytest.raises(IntegrityError, match="master public key") as exc:
        parsed.verify([master.public_key()], NAME, now=now)
    assert exc.value.what == ".cvmfswhitelist"
    with pytest.raises(IntegrityError):
        parsed.verify([], NAME, now=now)
    # any of several master keys is enough
    parsed.verify([master.public_key(), other_master.public_key()], NAME, now=now)


def test_manifest_style_signature_refused(master: rsa.RSAPrivateKey) -> None:
    data = signed.join(_wl().body(), Algorithm.SHA1, lambda h: keys.sign_manifest_hash(master, h))
    with pytest.raises(IntegrityError, match="master"):
        whitelist.parse(data).verify([master.public_key()], NAME, now=_at("20291215000000"))


def test_tampered_whitelist_refused(master: rsa.RSAPrivateKey) -> None:
    data = _wl().sign(master)
    now = _at("20291215000000")
    tampered = data.replace(b"E2030", b"E2031", 1)
    with pytest.raises(IntegrityError, match="hash mismatch"):
        whitelist.parse(tampered).verify([master.public_key()], NAME, now=now)
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        whitelist.parse(bytes(flipped)).verify([master.public_key()], NAME, now=now)
    # re-hashed but not re-signed
    body = _wl(fingerprints=(FP2,)).body()
    sig = whitelist.parse(data).envelope.signature
    forged = body + b"--\n" + ContentHash.of(body).hex.encode() + b"\n" + sig
    with pytest.raises(IntegrityError, match="master"):
        whitelist.parse(forged).verify([master.public_key()], NAME, now=now)


def test_name_mismatch_refused(master: rsa.RSAPrivateKey) -> None:
    parsed = whitelist.parse(_wl(repository_name="other.example.org").sign(master))
    with pytest.raises(IntegrityError, match=r"other\.example\.org"):
        parsed.verify([master.public_key()], NAME, now=_at("20291215000000"))
    parsed.verify([master.public_key()], "other.example.org", now=_at("20291215000000"))


@pytest.mark.parametrize(
    "body",
    [
        b"2029120112000\nE20300101120000\nNrepo.example.org\n",  # 13-char creation line
        b"202912011200000\nE20300101120000\nNrepo.example.org\n",  # 15-char creation line
        b"20291201120000\nE2030010112000\nNrepo.example.org\n",  # 14-char E line
        b"20291201120000\n20300101120000\nNrepo.example.org\n",  # no E
        b"20291201120000\nX20300101120000\nNrepo.example.org\n",
        b"20291201120000\nE20301301120000\nNrepo.example.org\n",  # month 13
        b"20291201120000\nE20300101120000\nrepo.example.org\n",  # no N
        b"20291201120000\nE20300101120000\n",
    ],
)
def test_malformed_header(master: rsa.RSAPrivateKey, body: bytes) -> None:
    with pytest.raises(IntegrityError):
        whitelist.parse(_sign_body(body, master))


def test_parse_stops_at_first_separator(master: rsa.RSAPrivateKey) -> None:
    data = _wl().sign(master) + b"\n--\n" + _wl(fingerprints=(FP2,)).sign(master)
    parsed = whitelist.parse(data)
    assert parsed.whitelist.fingerprints == (FP,)


# -- stock fixtures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "algo", "suffix"),
    [("stock.example.org", Algorithm.SHA1, ""), ("shake.example.org", Algorithm.SHAKE128, "-SHAKE128")],
)
def test_stock_whitelist(name: str, algo: Algorithm, suffix: str) -> None:
    raw = (FIXTURES / name / ".cvmfswhitelist").read_bytes()
    master_key = keys.load_public_key_file(FIXTURES / f"{name}.pub")
    parsed = whitelist.parse(raw)
    wl = parsed.whitelist
    assert wl.repository_name == name
    assert wl.body() == parsed.envelope.body  # our serializer reproduces stock's bytes
    assert len(wl.fingerprints) == 1
    assert wl.fingerprints[0].endswith(suffix)
    assert parsed.envelope.check_hash(".cvmfswhitelist").algorithm is algo
    assert wl.expires.year == 2036
    parsed.verify([master_key], name, now=_at("20300101000000"))
    parsed.verify([master_key], name)  # valid today as well
    with pytest.raises(IntegrityError, match="expired"):
        parsed.verify([master_key], name, now=wl.expires)
    with pytest.raises(IntegrityError):
        parsed.verify([master_key], "stock.example.com", now=_at("20300101000000"))
    other = "shake.example.org" if name == "stock.example.org" else "stock.example.org"
    with pytest.raises(IntegrityError, match="master"):
        parsed.verify([keys.load_public_key_file(FIXTURES / f"{other}.pub")], name, now=_at("20300101000000"))


def test_times_read_like_strptime() -> None:
    """The whitelist's fixed-width times are read without strptime, with the same results."""
    import random

    rng = random.Random(7)
    samples = ["20301231235959", "20000229000000", "19700101000000", "20300230000000", "20301301000000"]
    samples += ["".join(rng.choice("0123456789") for _ in range(14)) for _ in range(3000)]
    for text in samples:
        try:
            expected: dt.datetime | None = dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
        except ValueError:
            expected = None
        try:
            found: dt.datetime | None = whitelist._parse_time(text)
        except ValueError:
            found = None
        assert found == expected, text
