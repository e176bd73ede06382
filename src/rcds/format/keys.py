"""RSA keys, the repository certificate, fingerprints and the two signature schemes.

* Manifests are signed with the repository key: RSA PKCS#1 v1.5 with a SHA-1 DigestInfo
  over the ASCII hash string of the manifest body.
* Whitelists are signed with the master key: raw PKCS#1 v1.5 type-1 padding over the ASCII
  hash string, with no DigestInfo (``openssl pkeyutl -sign``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash

KEY_BITS = 2048


def generate_key() -> rsa.RSAPrivateKey:
    """A new 2048-bit RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PEM (traditional OpenSSL) encoding of a private key, as ``openssl genrsa`` writes it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), the client's key file format."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes, what: str = "private key") -> rsa.RSAPrivateKey:
    """Parse an RSA private key from PEM."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what} is not a readable PEM private key ({exc})", what) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IntegrityError(f"{what} is not an RSA key", what)
    return key


def load_public_key(pem: bytes, what: str = "public key") -> rsa.RSAPublicKey:
    """Parse an RSA public key from SubjectPublicKeyInfo PEM."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what} is not a readable PEM public key ({exc})", what) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise IntegrityError(f"{what} is not an RSA public key", what)
    return key


def load_public_key_file(path: Path) -> rsa.RSAPublicKey:
    """Read an RSA public key file (a master key ``<fqrn>.pub``)."""
    try:
        return load_public_key(path.read_bytes(), str(path))
    except OSError as exc:
        raise IntegrityError(f"cannot read public key {path}: {exc.strerror}", str(path)) from None


def certificate_subject(fqrn: str) -> str:
    """The CN stock writes: the fqrn (cut to 30 chars + ``[...]``) and ``CernVM-FS Release Managers``."""
    name = fqrn if len(fqrn) <= 30 else fqrn[:30] + "[...]"
    return f"{name} CernVM-FS Release Managers"


def make_certificate(fqrn: str, key: rsa.RSAPrivateKey, days: int = 365) -> x509.Certificate:
    """A self-signed repository certificate (clients do not check its dates)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_subject(fqrn))])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    """PEM text of a certificate (the plain content of the ``X`` object)."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    """Parse the first certificate of a PEM text."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IntegrityError(f"{what} is not a readable PEM certificate ({exc})", what) from None


def fingerprint(cert: x509.Certificate, algorithm: Algorithm = Algorithm.SHA1) -> str:
    """Whitelist fingerprint: hash of the DER, ``AB:CD:...`` plus the uppercased algorithm id."""
    der = cert.public_bytes(serialization.Encoding.DER)
    digest = ContentHash.of(der, algorithm).digest
    return ":".join(f"{b:02X}" for b in digest) + algorithm.identifier.upper()


def sign_manifest_hash(key: rsa.RSAPrivateKey, hash_string: str) -> bytes:
    """Manifest signature: PKCS#1 v1.5 with SHA-1 DigestInfo over the ASCII hash string."""
    return key.sign(hash_string.encode("ascii"), padding.PKCS1v15(), hashes.SHA1())


def verify_manifest_hash(key: rsa.RSAPublicKey, hash_string: str, signature: bytes) -> bool:
    """Check a manifest signature made by :func:`sign_manifest_hash`."""
    try:
        key.verify(signature, hash_string.encode("ascii"), padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        return False
    return True


def sign_raw(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """Raw PKCS#1 v1.5 type-1 signature (no DigestInfo), as ``openssl pkeyutl -sign`` makes."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    k = (n.bit_length() + 7) // 8
    if len(message) > k - 11:
        raise ValueError("message too long for a raw RSA signature")
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(message)) + b"\x00" + message
    return pow(int.from_bytes(em, "big"), numbers.d, n).to_bytes(k, "big")


def verify_raw(key: rsa.RSAPublicKey, message: bytes, signature: bytes) -> bool:
    """Check a raw PKCS#1 v1.5 type-1 signature by recovering the signed bytes."""
    try:
        recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return False
    return recovered == message
