"""RSA keys, the repository certificate, fingerprints and the two signature schemes.

* Manifests are signed with the repository key: RSA PKCS#1 v1.5 with a SHA-1 DigestInfo
  over the ASCII hash string of the manifest body.
* Whitelists are signed with the master key: raw PKCS#1 v1.5 type-1 padding over the ASCII
  hash string, with no DigestInfo (``openssl pkeyutl -sign``).

Making keys, certificates and signatures uses ``cryptography`` (imported when first needed).
Checking signatures does not: that lives in :mod:`rcds.format.signed` (re-exported here), so
that a client process never imports ``cryptography``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm
from rcds.format.signed import (
    PublicNumbers,
    RepoCertificate,
    RsaPublicKey,
    VerifyKey,
    der_fingerprint,
    load_repository_certificate,
    load_verify_key,
    load_verify_key_file,
    type1_block,
    verify_manifest_hash,
    verify_raw,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "KEY_BITS",
    "PublicNumbers",
    "RepoCertificate",
    "RsaPublicKey",
    "VerifyKey",
    "certificate_pem",
    "certificate_subject",
    "fingerprint",
    "generate_key",
    "load_certificate",
    "load_private_key",
    "load_public_key",
    "load_public_key_file",
    "load_repository_certificate",
    "load_verify_key",
    "load_verify_key_file",
    "make_certificate",
    "private_key_pem",
    "public_key_pem",
    "sign_manifest_hash",
    "sign_raw",
    "verify_manifest_hash",
    "verify_raw",
]

KEY_BITS = 2048


def generate_key() -> rsa.RSAPrivateKey:
    """A new 2048-bit RSA key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PEM (traditional OpenSSL) encoding of a private key, as ``openssl genrsa`` writes it."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), the client's key file format."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes, what: str = "private key") -> rsa.RSAPrivateKey:
    """Parse an RSA private key from PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what} is not a readable PEM private key ({exc})", what) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IntegrityError(f"{what} is not an RSA key", what)
    return key


def load_public_key(pem: bytes, what: str = "public key") -> rsa.RSAPublicKey:
    """Parse an RSA public key from PEM as a ``cryptography`` key (for checks only, see
    :func:`load_verify_key`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

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
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

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
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    """Parse the first certificate of a PEM text as a ``cryptography`` certificate (the trust
    chain uses :func:`load_repository_certificate`)."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IntegrityError(f"{what} is not a readable PEM certificate ({exc})", what) from None


def fingerprint(cert: x509.Certificate | RepoCertificate, algorithm: Algorithm = Algorithm.SHA1) -> str:
    """Whitelist fingerprint: hash of the DER, ``AB:CD:...`` plus the uppercased algorithm id."""
    if isinstance(cert, RepoCertificate):
        return der_fingerprint(cert.der, algorithm)
    from cryptography.hazmat.primitives import serialization

    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER), algorithm)


def sign_manifest_hash(key: rsa.RSAPrivateKey, hash_string: str) -> bytes:
    """Manifest signature: PKCS#1 v1.5 with SHA-1 DigestInfo over the ASCII hash string."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return key.sign(hash_string.encode("ascii"), padding.PKCS1v15(), hashes.SHA1())


def sign_raw(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """Raw PKCS#1 v1.5 type-1 signature (no DigestInfo), as ``openssl pkeyutl -sign`` makes."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    k = (n.bit_length() + 7) // 8
    em = type1_block(message, k)
    if em is None:
        raise ValueError("message too long for a raw RSA signature")
    return pow(int.from_bytes(em, "big"), numbers.d, n).to_bytes(k, "big")
