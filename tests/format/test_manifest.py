"""The manifest ``.cvmfspublished`` (reference section 3), including the stock-published fixtures."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError
from rcds.format import keys, manifest, signed
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
R = "d41d8cd98f00b204e9800998ecf8427e"
C = ContentHash.parse("5c1b2d0f6a0e0b8a1c3c6f0a8b6f1e2d3c4b5a69")
X = ContentHash.parse("1f0e" + "ab" * 18)
H = ContentHash.parse("cfb6ba6cd665eb7c97c1e6366dc2fb1efb1743cc")
M = ContentHash.parse("0123456789abcdef0123456789abcdef01234567")
Y = ContentHash.parse("eeaccabbf5029ee32292b46e0c0a4eb76e50ed5a")


def _manifest(**changes: object) -> manifest.Manifest:
    m = manifest.Manifest(
        root_catalog=C,
        root_catalog_size=1445888,
        ttl=240,
        revision=42,
        repository_name="repo.example.org",
        certificate=X,
        timestamp=1729238467,
        garbage_collectable=False,
    )
    return m.evolve(**changes)


# -- serialization ------------------------------------------------------------------------------


def test_body_minimal_matches_reference_example() -> None:
    assert (
        _manifest().body()
        == (
            f"C{C.hex}\nB1445888\nR{R}\nD240\nS42\nGno\nAno\nNrepo.example.org\nX{X.hex}\nT1729238467\n"
        ).encode()
    )


def test_body_all_optional_keys_in_stock_order() -> None:
    m = _manifest(garbage_collectable=True, alternative_paths=True, history=H, metainfo=M, reflog=Y)
    lines = m.body().decode().split("\n")
    assert lines[-1] == ""
    assert [line[0] for line in lines[:-1]] == list("CBRDSGANXHTMY")
    assert lines[5:7] == ["Gyes", "Ayes"]
    assert lines[9] == f"H{H.hex}"
    assert lines[11] == f"M{M.hex}"
    assert lines[12] == f"Y{Y.hex}"


def test_body_omits_empty_optional_keys() -> None:
    body = _manifest(repository_name="", timestamp=0).body().decode()
    letters = [line[0] for line in body.split("\n") if line]
    assert letters == list("CBRDSGAX")
    body = _manifest(history=H).body().decode()
    assert [line[0] for line in body.split("\n") if line] == list("CBRDSGANXHT")


def test_body_with_shake_hashes() -> None:
    c = ContentHash.of(b"x", Algorithm.SHAKE128)
    m = _manifest(root_catalog=c, certificate=ContentHash.of(b"y", Algorithm.SHAKE128))
    assert m.body().startswith(f"C{c.hex}\n".encode())
    assert c.hex.endswith("-shake128")


# -- signing and parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"history": H, "metainfo": M, "reflog": Y, "garbage_collectable": True, "alternative_paths": True},
        {"timestamp": 0},
    ],
)
def test_sign_parse_verify_round_trip(key: rsa.RSAPrivateKey, changes: dict[str, object]) -> None:
    m = _manifest(**changes)
    data = m.sign(key)
    body = m.body()
    assert data.startswith(body + b"--\n")
    hash_line = ContentHash.of(body).hex
    assert data[len(body) + 3 :].startswith(hash_line.encode() + b"\n")
    sig = data[len(body) + 3 + 41 :]
    assert len(sig) == 256
    assert keys.verify_manifest_hash(key.public_key(), hash_line, sig)
    parsed = manifest.parse(data)
    assert parsed.manifest == m
    assert parsed.raw == data
    assert parsed.envelope.body == body
    parsed.verify_signature(key.public_key())


def test_sign_uses_the_root_catalog_algorithm(key: rsa.RSAPrivateKey) -> None:
    c = ContentHash.of(b"root", Algorithm.SHAKE128)
    m = _manifest(root_catalog=c, certificate=ContentHash.of(b"cert", Algorithm.SHAKE128))
    data = m.sign(key)
    parsed = manifest.parse(data)
    assert parsed.envelope.hash_string == ContentHash.of(m.body(), Algorithm.SHAKE128).hex
    assert parsed.envelope.hash_string.endswith("-shake128")
    parsed.verify_signature(key.public_key())
    assert parsed.manifest == m


def test_tampered_body_refused(key: rsa.RSAPrivateKey) -> None:
    data = _manifest().sign(key)
    tampered = data.replace(b"S42\n", b"S43\n", 1)
    parsed = manifest.parse(tampered)
    assert parsed.manifest.revision == 43
    with pytest.raises(IntegrityError, match="hash mismatch") as exc:
        parsed.verify_signature(key.public_key())
    assert exc.value.what == ".cvmfspublished"


def test_tampered_body_with_recomputed_hash_refused(key: rsa.RSAPrivateKey) -> None:
    body = _manifest().body().replace(b"S42\n", b"S43\n")
    original = manifest.parse(_manifest().sign(key))
    forged = body + b"--\n" + ContentHash.of(body).hex.encode() + b"\n" + original.envelope.signature
    with pytest.raises(IntegrityError, match="signature"):
        manifest.parse(forged).verify_signature(key.public_key())


def test_flipped_signature_refused(key: rsa.RSAPrivateKey) -> None:
    data = bytearray(_manifest().sign(key))
    data[-10] ^= 0x04
    with pytest.raises(IntegrityError, match="signature"):
        manifest.parse(bytes(data)).verify_signature(key.public_key())


def test_wrong_key_refused(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    data = _manifest().sign(other_key)
    with pytest.raises(IntegrityError, match="signature") as exc:
        manifest.parse(data).verify_signature(key.public_key())
    assert exc.value.what == ".cvmfspublished"
    manifest.parse(data).verify_signature(other_key.public_key())


def test_whitelist_style_signature_refused(key: rsa.RSAPrivateKey) -> None:
    body = _manifest().body()
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_raw(key, h.encode()))
    with pytest.raises(IntegrityError, match="signature"):
        manifest.parse(data).verify_signature(key.public_key())


@pytest.mark.parametrize("letter", list("CRDSNX"))
def test_missing_required_key(key: rsa.RSAPrivateKey, letter: str) -> None:
    body = b"".join(
        line + b"\n"
        for line in _manifest().body().split(b"\n")
        if line and not line.startswith(letter.encode())
    )
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h))
    with pytest.raises(IntegrityError, match="incomplete") as exc:
        manifest.parse(data)
    assert letter in str(exc.value)
    assert exc.value.what == ".cvmfspublished"


def test_optional_keys_may_be_missing(key: rsa.RSAPrivateKey) -> None:
    body = (f"C{C.hex}\nR{R}\nD240\nS7\nNrepo.example.org\nX{X.hex}\n").encode()
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h))
    m = manifest.parse(data).manifest
    assert (m.root_catalog_size, m.timestamp, m.revision) == (0, 0, 7)
    assert m.history is None and m.metainfo is None and m.reflog is None
    assert not m.alternative_paths


@pytest.mark.parametrize("bad_r", ["d41d8cd98f00b204e9800998ecf8427f", "", "0" * 32, R.upper()])
def test_bad_root_path_hash(key: rsa.RSAPrivateKey, bad_r: str) -> None:
    body = _manifest().body().replace(f"R{R}\n".encode(), f"R{bad_r}\n".encode())
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h))
    with pytest.raises(IntegrityError, match="root path hash"):
        manifest.parse(data)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"S42\n", b"S-1\n"),
        (b"S42\n", b"Sforty\n"),
        (b"D240\n", b"D\n"),
        (b"B1445888\n", b"B1e6\n"),
        (b"Gno\n", b"Gmaybe\n"),
        (b"Ano\n", b"ANO\n"),
        (f"C{C.hex}\n".encode(), f"C{C.hex.upper()}\n".encode()),
        (f"X{X.hex}\n".encode(), b"Xnothex\n"),
        (b"T1729238467\n", b"T17292.38467\n"),
        (b"S42\n", "S4\u00b2\n".encode()),  # superscript two: str.isdigit() says yes, int() says no
        (b"S42\n", "S\u0664\u0662\n".encode()),  # Arabic-Indic digits: no other script's digits
        (b"B1445888\n", "B\uff11\n".encode()),  # fullwidth one
        (b"D240\n", b"D 240\n"),
    ],
)
def test_malformed_values(key: rsa.RSAPrivateKey, old: bytes, new: bytes) -> None:
    body = _manifest().body().replace(old, new)
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h))
    with pytest.raises(IntegrityError):
        manifest.parse(data)


def test_unknown_keys_ignored_and_later_duplicates_win(key: rsa.RSAPrivateKey) -> None:
    body = _manifest().body() + b"Qsomething\nZchannel1\nZchannel2\nL" + C.hex.encode() + b"\nS43\n"
    data = signed.join(body, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h))
    parsed = manifest.parse(data)
    assert parsed.manifest.revision == 43
    parsed.verify_signature(key.public_key())


def test_first_separator_wins(key: rsa.RSAPrivateKey) -> None:
    good = _manifest().sign(key)
    evil = _manifest(revision=99).sign(key)
    # everything after the first "\n--\n" is hash line + signature, even if it holds another manifest
    combined = good + b"\n--\n" + evil
    parsed = manifest.parse(combined)
    assert parsed.manifest.revision == 42
    assert parsed.envelope.signature.startswith(good.split(b"\n--\n", 1)[1].split(b"\n", 1)[1])
    with pytest.raises(IntegrityError, match="signature"):
        parsed.verify_signature(key.public_key())
    # a "--" line inside the body cuts the body there
    body = _manifest().body()
    cut = body.replace(b"S42\n", b"S42\n--\n")
    with pytest.raises(IntegrityError):
        manifest.parse(signed.join(cut, Algorithm.SHA1, lambda h: keys.sign_manifest_hash(key, h)))


def test_separator_bytes_inside_signature() -> None:
    env = signed.split(b"Ca\nS1\n--\nabc\nsig\n--\nmore\n", "m")
    assert env.body == b"Ca\nS1\n"
    assert env.hash_string == "abc"
    assert env.signature == b"sig\n--\nmore\n"


@pytest.mark.parametrize(
    "data",
    [b"", b"C" + C.hex.encode() + b"\n", b"Cabc\n--\n", b"Cabc\n--\nno-newline-after-hash", b"--\nabc\n"],
)
def test_envelope_errors(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        manifest.parse(data)


def test_signed_join_requires_newline() -> None:
    with pytest.raises(ValueError):
        signed.join(b"Cabc", Algorithm.SHA1, lambda h: b"")


# -- stock fixtures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "algo", "revision"),
    [("stock.example.org", Algorithm.SHA1, 2), ("shake.example.org", Algorithm.SHAKE128, 1)],
)
def test_stock_manifest(name: str, algo: Algorithm, revision: int) -> None:
    repo = FIXTURES / name
    raw = (repo / ".cvmfspublished").read_bytes()
    parsed = manifest.parse(raw)
    m = parsed.manifest
    assert m.repository_name == name
    assert m.revision == revision
    assert m.root_catalog.algorithm is algo
    assert m.certificate.algorithm is algo
    assert m.ttl == 240
    assert m.root_catalog_size > 0
    assert m.timestamp > 1_700_000_000
    assert m.history is not None and m.reflog is not None
    assert not m.garbage_collectable and not m.alternative_paths
    # our serializer reproduces the stock body byte for byte
    assert m.body() == parsed.envelope.body
    assert parsed.envelope.check_hash(".cvmfspublished").algorithm is algo
    # the referenced objects exist
    assert (repo / m.root_catalog.object_name(ObjectKind.CATALOG)).is_file()
    assert (repo / m.history.object_name(ObjectKind.HISTORY)).is_file()
    # the reflog hash Y covers the plain .cvmfsreflog file
    assert ContentHash.of((repo / ".cvmfsreflog").read_bytes(), algo) == m.reflog
    # signature by the certificate object X
    cert_raw = (repo / m.certificate.object_name(ObjectKind.CERTIFICATE)).read_bytes()
    assert ContentHash.of(cert_raw, algo) == m.certificate
    cert = keys.load_certificate(zlib.decompress(cert_raw))
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    parsed.verify_signature(pub)


def test_stock_manifest_tampered_copy_refused() -> None:
    repo = FIXTURES / "stock.example.org"
    raw = (repo / ".cvmfspublished").read_bytes()
    m = manifest.parse(raw).manifest
    cert = keys.load_certificate(
        zlib.decompress((repo / m.certificate.object_name(ObjectKind.CERTIFICATE)).read_bytes())
    )
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    with pytest.raises(IntegrityError):
        manifest.parse(raw.replace(b"S2\n", b"S3\n")).verify_signature(pub)
    other = keys.generate_key().public_key()
    with pytest.raises(IntegrityError, match="signature"):
        manifest.parse(raw).verify_signature(other)
