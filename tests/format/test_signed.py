"""Signature checks without ``cryptography`` (rcds.format.signed), against ``cryptography`` and openssl."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from rcds.errors import IntegrityError
from rcds.format import keys, manifest, signed
from rcds.format.hashes import Algorithm, ObjectKind

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
HASH_STRING = "bfc296d7d90de707e52154e4fcd1cf80d5de5b7b"
STOCK = ["stock.example.org", "shake.example.org"]


def _numbers(k: rsa.RSAPublicKey) -> tuple[int, int]:
    n = k.public_numbers()
    return n.n, n.e


def _light(k: rsa.RSAPrivateKey) -> signed.RsaPublicKey:
    return signed.load_verify_key(keys.public_key_pem(k.public_key()))


def _stock_certificate(name: str) -> tuple[bytes, Algorithm]:
    m = manifest.parse((FIXTURES / name / ".cvmfspublished").read_bytes()).manifest
    raw = (FIXTURES / name / m.certificate.object_name(ObjectKind.CERTIFICATE)).read_bytes()
    return zlib.decompress(raw), m.certificate.algorithm


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label.encode(), b"\n".join(lines), label.encode())


# -- reading keys and certificates ---------------------------------------------------------------


def test_public_keys_read_like_cryptography(key: rsa.RSAPrivateKey) -> None:
    pub = key.public_key()
    spki = keys.public_key_pem(pub)
    light = signed.load_verify_key(spki)
    assert (light.n, light.e) == _numbers(pub)
    assert light.key_size == 2048 and light.public_numbers() is light
    pkcs1 = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert signed.load_verify_key(pkcs1) == light
    # text around the block and CRLF line ends are fine, as for openssl
    assert signed.load_verify_key(b"comment\r\n" + spki.replace(b"\n", b"\r\n") + b"more") == light


@pytest.mark.parametrize("name", STOCK)
def test_stock_master_keys_and_certificates(name: str) -> None:
    light = signed.load_verify_key_file(FIXTURES / f"{name}.pub")
    assert (light.n, light.e) == _numbers(keys.load_public_key_file(FIXTURES / f"{name}.pub"))
    pem, algo = _stock_certificate(name)
    cert = signed.load_repository_certificate(pem)
    full = keys.load_certificate(pem)
    assert cert.der == full.public_bytes(serialization.Encoding.DER)
    full_key = full.public_key()
    assert isinstance(full_key, rsa.RSAPublicKey)
    assert (cert.key.n, cert.key.e) == _numbers(full_key)
    assert cert.fingerprint(algo) == keys.fingerprint(full, algo) == keys.fingerprint(cert, algo)
    assert cert.to_x509() == full


def test_generated_certificate(key: rsa.RSAPrivateKey) -> None:
    x = keys.make_certificate("test.example.org", key)
    cert = signed.load_repository_certificate(keys.certificate_pem(x))
    assert cert.der == x.public_bytes(serialization.Encoding.DER)
    assert (cert.public_key().n, cert.public_key().e) == _numbers(key.public_key())
    for algo in Algorithm:
        assert cert.fingerprint(algo) == keys.fingerprint(x, algo)


def test_unreadable_keys_and_certificates_are_refused(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(IntegrityError):
        signed.load_verify_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(IntegrityError):
        signed.load_verify_key(b"not a key")
    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(IntegrityError, match="RSA"):
        signed.load_verify_key(ec_pub)
    with pytest.raises(IntegrityError) as exc:
        signed.load_verify_key_file(tmp_path / "missing.pub")
    assert exc.value.what == str(tmp_path / "missing.pub")
    with pytest.raises(IntegrityError):
        signed.load_repository_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    # trailing bytes after the DER, or a truncated DER: not a certificate
    der = keys.make_certificate("test.example.org", key).public_bytes(serialization.Encoding.DER)
    for bad in (der + b"\x00", der[:-1]):
        with pytest.raises(IntegrityError):
            signed.load_repository_certificate(_pem("CERTIFICATE", bad))


def test_certificate_with_a_non_rsa_key_is_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    with pytest.raises(IntegrityError, match="RSA"):
        signed.load_repository_certificate(cert.public_bytes(serialization.Encoding.PEM))


# -- checking signatures --------------------------------------------------------------------------


def test_raw_signatures(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    light = _light(key)
    message = HASH_STRING.encode()
    sig = keys.sign_raw(key, message)
    assert signed.verify_raw(light, message, sig)
    assert signed.verify_raw(key.public_key(), message, sig)  # cryptography's keys work as well
    for pos in (0, 1, 100, 255):
        bad = bytearray(sig)
        bad[pos] ^= 0x01
        assert not signed.verify_raw(light, message, bytes(bad))
    assert not signed.verify_raw(light, message[:-1] + b"0", sig)
    assert not signed.verify_raw(light, message + b"\n", sig)
    assert not signed.verify_raw(_light(other_key), message, sig)
    assert not signed.verify_raw(light, message, sig[:-1])
    assert not signed.verify_raw(light, message, b"")
    assert not signed.verify_raw(light, message, b"\x01" + sig)  # longer than the modulus
    assert not signed.verify_raw(light, message, (light.n + 1).to_bytes(257, "big")[1:])  # >= n
    assert not signed.verify_raw(light, message, keys.sign_manifest_hash(key, HASH_STRING))
    assert signed.verify_raw(light, b"a" * 245, keys.sign_raw(key, b"a" * 245))
    assert not signed.verify_raw(light, b"a" * 246, keys.sign_raw(key, b"a" * 245))


def _sign_raw_crt(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """What :func:`keys.sign_raw` makes, by the Chinese remainder theorem (~3x faster in Python)."""
    nums = key.private_numbers()
    k = (nums.public_numbers.n.bit_length() + 7) // 8
    em = int.from_bytes(keys.type1_block(message, k) or b"", "big")
    m1, m2 = pow(em, nums.dmp1, nums.p), pow(em, nums.dmq1, nums.q)
    return (m2 + (nums.iqmp * (m1 - m2) % nums.p) * nums.q).to_bytes(k, "big")


def test_raw_signature_with_leading_zero_bytes_stripped(key: rsa.RSAPrivateKey) -> None:
    """OpenSSL's RSA_public_decrypt takes signatures shorter than the modulus; so do we."""
    for i in range(2000):  # 1 in 128-256 signatures starts with a zero byte
        message = f"{HASH_STRING[:-4]}{i:04d}".encode()
        if _sign_raw_crt(key, message)[0] == 0:
            sig = keys.sign_raw(key, message)
            assert sig[0] == 0 and len(sig) == 256
            assert signed.verify_raw(_light(key), message, sig.lstrip(b"\x00"))
            short = sig.lstrip(b"\x00")
            assert key.public_key().recover_data_from_signature(short, padding.PKCS1v15(), None) == message
            return
    pytest.skip("no signature with a leading zero byte found")


def test_manifest_signatures(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    light = _light(key)
    sig = keys.sign_manifest_hash(key, HASH_STRING)
    assert signed.verify_manifest_hash(light, HASH_STRING, sig)
    assert signed.verify_manifest_hash(key.public_key(), HASH_STRING, sig)
    for pos in (0, 17, 255):
        bad = bytearray(sig)
        bad[pos] ^= 0x80
        assert not signed.verify_manifest_hash(light, HASH_STRING, bytes(bad))
    assert not signed.verify_manifest_hash(_light(other_key), HASH_STRING, sig)
    assert not signed.verify_manifest_hash(light, HASH_STRING[::-1], sig)
    assert not signed.verify_manifest_hash(light, HASH_STRING, sig.lstrip(b"\x00")[1:])
    assert not signed.verify_manifest_hash(light, HASH_STRING, keys.sign_raw(key, HASH_STRING.encode()))
    # another digest in the DigestInfo (SHA-256 of the same text) is not a SHA-1 signature
    sha256 = key.sign(HASH_STRING.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert not signed.verify_manifest_hash(light, HASH_STRING, sha256)


@pytest.mark.parametrize("name", STOCK)
def test_stock_signatures_verify(name: str) -> None:
    pem, _ = _stock_certificate(name)
    cert = signed.load_repository_certificate(pem)
    m = manifest.parse((FIXTURES / name / ".cvmfspublished").read_bytes())
    m.verify_signature(cert.key)
    wl = signed.split((FIXTURES / name / ".cvmfswhitelist").read_bytes(), "whitelist")
    master = signed.load_verify_key_file(FIXTURES / f"{name}.pub")
    assert signed.verify_raw(master, wl.hash_string.encode(), wl.signature)


def test_client_never_imports_cryptography(tmp_path: Path) -> None:
    """Opening a repository checks signatures without cryptography (it costs ~50 ms per process)."""
    pub = FIXTURES / "stock.example.org.pub"
    code = (
        "import sys, pathlib, rcds.client.repository, rcds.cli.client; "
        "from rcds.format import signed; "
        f"signed.load_verify_key_file(pathlib.Path({str(pub)!r})); "
        "bad = [m for m in sys.modules if m.startswith('cryptography') or m == 'rcds.format.keys']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
