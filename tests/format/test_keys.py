"""Keys, certificates, fingerprints and both signature schemes (reference section 4), against openssl."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from rcds.errors import IntegrityError
from rcds.format import keys, manifest
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
HASH_STRING = "bfc296d7d90de707e52154e4fcd1cf80d5de5b7b"


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv = d / "test.key"
    pub = d / "test.pub"
    priv.write_bytes(keys.private_key_pem(key))
    pub.write_bytes(keys.public_key_pem(key.public_key()))
    return priv, pub


def _openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    res = subprocess.run([OPENSSL, *map(str, args)], input=data, capture_output=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


def _fixture_certificate(name: str) -> tuple[bytes, Algorithm]:
    m = manifest.parse((FIXTURES / name / ".cvmfspublished").read_bytes()).manifest
    raw = (FIXTURES / name / m.certificate.object_name(ObjectKind.CERTIFICATE)).read_bytes()
    return zlib.decompress(raw), m.certificate.algorithm


# -- key files ---------------------------------------------------------------------------


def test_key_pem_formats(key: rsa.RSAPrivateKey) -> None:
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537
    priv = keys.private_key_pem(key)
    assert priv.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    pub = keys.public_key_pem(key.public_key())
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert keys.load_private_key(priv).private_numbers() == key.private_numbers()
    assert keys.load_public_key(pub).public_numbers() == key.public_key().public_numbers()


def test_key_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        keys.load_private_key(b"not a key", "k")
    with pytest.raises(IntegrityError):
        keys.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pub = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(IntegrityError, match="RSA"):
        keys.load_public_key(ec_pub)
    ec_priv = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(IntegrityError, match="RSA"):
        keys.load_private_key(ec_priv)
    with pytest.raises(IntegrityError) as exc:
        keys.load_public_key_file(tmp_path / "missing.pub")
    assert exc.value.what == str(tmp_path / "missing.pub")


@pytest.mark.parametrize("name", ["stock.example.org", "shake.example.org"])
def test_stock_master_keys_load(name: str) -> None:
    k = keys.load_public_key_file(FIXTURES / f"{name}.pub")
    assert k.key_size >= 2048


@needs_openssl
def test_openssl_generated_keys_load(tmp_path: Path) -> None:
    priv = tmp_path / "m.masterkey"
    _openssl("genrsa", "-out", priv, "2048")
    pub = _openssl("rsa", "-in", priv, "-pubout")
    k = keys.load_private_key(priv.read_bytes())
    assert keys.load_public_key(pub).public_numbers() == k.public_key().public_numbers()
    sig = keys.sign_raw(k, HASH_STRING.encode())
    (tmp_path / "msg").write_bytes(HASH_STRING.encode())
    assert _openssl("pkeyutl", "-sign", "-inkey", priv, "-in", tmp_path / "msg") == sig


# -- raw (whitelist) signatures ---------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(
    "message", [HASH_STRING, HASH_STRING + "-rmd160", HASH_STRING + "-shake128", "x", "a" * 64]
)
def test_sign_raw_identical_to_openssl_pkeyutl(
    tmp_path: Path, key: rsa.RSAPrivateKey, key_files: tuple[Path, Path], message: str
) -> None:
    priv, pub = key_files
    msg = tmp_path / "hash"
    msg.write_bytes(message.encode())
    expected = _openssl("pkeyutl", "-sign", "-inkey", priv, "-in", msg)
    sig = keys.sign_raw(key, message.encode())
    assert sig == expected
    assert len(sig) == 256
    assert keys.verify_raw(key.public_key(), message.encode(), sig)
    # and openssl recovers our message from our signature
    sig_file = tmp_path / "sig"
    sig_file.write_bytes(sig)
    recovered = _openssl("pkeyutl", "-verifyrecover", "-pubin", "-inkey", pub, "-in", sig_file)
    assert recovered == message.encode()


def test_verify_raw_rejects_tampering(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    message = HASH_STRING.encode()
    sig = keys.sign_raw(key, message)
    assert keys.verify_raw(key.public_key(), message, sig)
    for pos in (0, 1, 100, 255):
        bad = bytearray(sig)
        bad[pos] ^= 0x01
        assert not keys.verify_raw(key.public_key(), message, bytes(bad))
    assert not keys.verify_raw(key.public_key(), message[:-1] + b"0", sig)
    assert not keys.verify_raw(key.public_key(), message + b"\n", sig)
    assert not keys.verify_raw(other_key.public_key(), message, sig)
    assert not keys.verify_raw(key.public_key(), message, sig[:-1])
    assert not keys.verify_raw(key.public_key(), message, b"")
    # a DigestInfo (manifest-style) signature is not a raw signature of the hash string
    assert not keys.verify_raw(key.public_key(), message, keys.sign_manifest_hash(key, HASH_STRING))


def test_sign_raw_length_limit(key: rsa.RSAPrivateKey) -> None:
    assert keys.verify_raw(key.public_key(), b"a" * 245, keys.sign_raw(key, b"a" * 245))
    with pytest.raises(ValueError):
        keys.sign_raw(key, b"a" * 246)


# -- manifest signatures ----------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("message", [HASH_STRING, HASH_STRING + "-shake128"])
def test_manifest_signature_verifies_with_openssl_dgst(
    tmp_path: Path, key: rsa.RSAPrivateKey, key_files: tuple[Path, Path], message: str
) -> None:
    _priv, pub = key_files
    sig = keys.sign_manifest_hash(key, message)
    assert len(sig) == 256
    (tmp_path / "hash").write_bytes(message.encode())
    (tmp_path / "sig").write_bytes(sig)
    out = _openssl("dgst", "-sha1", "-verify", pub, "-signature", tmp_path / "sig", tmp_path / "hash")
    assert b"Verified OK" in out


@needs_openssl
def test_manifest_signature_made_by_openssl_verifies(
    tmp_path: Path, key: rsa.RSAPrivateKey, key_files: tuple[Path, Path]
) -> None:
    priv, _pub = key_files
    (tmp_path / "hash").write_bytes(HASH_STRING.encode())
    sig = _openssl("dgst", "-sha1", "-sign", priv, tmp_path / "hash")
    assert sig == keys.sign_manifest_hash(key, HASH_STRING)  # PKCS#1 v1.5 is deterministic
    assert keys.verify_manifest_hash(key.public_key(), HASH_STRING, sig)


def test_verify_manifest_hash_rejects(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    sig = keys.sign_manifest_hash(key, HASH_STRING)
    assert keys.verify_manifest_hash(key.public_key(), HASH_STRING, sig)
    bad = bytearray(sig)
    bad[17] ^= 0x80
    assert not keys.verify_manifest_hash(key.public_key(), HASH_STRING, bytes(bad))
    assert not keys.verify_manifest_hash(other_key.public_key(), HASH_STRING, sig)
    assert not keys.verify_manifest_hash(key.public_key(), HASH_STRING[::-1], sig)
    # a raw (whitelist-style) signature is not a manifest signature
    assert not keys.verify_manifest_hash(
        key.public_key(), HASH_STRING, keys.sign_raw(key, HASH_STRING.encode())
    )


# -- certificates and fingerprints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fqrn", "expected"),
    [
        ("test.example.org", "test.example.org CernVM-FS Release Managers"),
        ("a" * 26 + ".org", "a" * 26 + ".org CernVM-FS Release Managers"),  # exactly 30
        ("a" * 27 + ".org", "a" * 27 + ".or[...] CernVM-FS Release Managers"),  # 31
        (
            "very-long-repository-name.department.example.org",
            "very-long-repository-name.depa[...] CernVM-FS Release Managers",
        ),
    ],
)
def test_certificate_subject(fqrn: str, expected: str, key: rsa.RSAPrivateKey) -> None:
    assert keys.certificate_subject(fqrn) == expected
    cert = keys.make_certificate(fqrn, key)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == [expected]
    assert cert.issuer == cert.subject


def test_certificate_round_trip(key: rsa.RSAPrivateKey) -> None:
    cert = keys.make_certificate("test.example.org", key)
    pem = keys.certificate_pem(cert)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert keys.load_certificate(pem) == cert
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()
    with pytest.raises(IntegrityError):
        keys.load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@needs_openssl
def test_fingerprint_matches_openssl(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    cert = keys.make_certificate("test.example.org", key)
    crt = tmp_path / "test.crt"
    crt.write_bytes(keys.certificate_pem(cert))
    out = _openssl("x509", "-in", crt, "-noout", "-fingerprint", "-sha1").decode().strip()
    expected = out.split("=", 1)[1]
    fp = keys.fingerprint(cert)
    assert fp == expected
    assert fp == fp.upper()
    assert len(fp) == 20 * 3 - 1
    assert all(len(part) == 2 for part in fp.split(":"))


def test_fingerprint_other_algorithms(key: rsa.RSAPrivateKey) -> None:
    cert = keys.make_certificate("test.example.org", key)
    der = cert.public_bytes(serialization.Encoding.DER)
    for algo in Algorithm:
        fp = keys.fingerprint(cert, algo)
        digest = ContentHash.of(der, algo).digest
        assert fp == ":".join(f"{b:02X}" for b in digest) + algo.identifier.upper()
    assert keys.fingerprint(cert, Algorithm.RMD160).endswith("-RMD160")
    assert keys.fingerprint(cert, Algorithm.SHAKE128).endswith("-SHAKE128")


@pytest.mark.parametrize("name", ["stock.example.org", "shake.example.org"])
def test_stock_certificate(name: str) -> None:
    pem, algo = _fixture_certificate(name)
    cert = keys.load_certificate(pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == [keys.certificate_subject(name)]
    # the stock whitelist lists exactly our fingerprint of the stock certificate
    wl = (FIXTURES / name / ".cvmfswhitelist").read_bytes().split(b"\n--\n")[0].decode().split("\n")
    assert keys.fingerprint(cert, algo) in wl


@needs_openssl
def test_stock_certificate_fingerprint_matches_openssl(tmp_path: Path) -> None:
    pem, _ = _fixture_certificate("stock.example.org")
    (tmp_path / "c.pem").write_bytes(pem)
    out = _openssl("x509", "-in", tmp_path / "c.pem", "-noout", "-fingerprint", "-sha1").decode().strip()
    assert keys.fingerprint(keys.load_certificate(pem)) == out.split("=", 1)[1]
