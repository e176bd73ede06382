"""The envelope shared by ``.cvmfspublished`` and ``.cvmfswhitelist``, and checking its signature.

``body`` (lines ending in ``\\n``) + ``--\\n`` + hash string of the body + ``\\n`` + raw signature.

Checking signatures needs no ``cryptography`` (importing it costs every client process ~50 ms):
public keys and the repository certificate are read by a small strict DER reader
(:class:`RsaPublicKey`, :class:`RepoCertificate`), and a signature is checked by recomputing
the whole expected PKCS#1 v1.5 block and comparing it with the decrypted signature (RFC 8017
§8.2.2, "encode and compare": nothing is parsed out of the block). What the reader does not take
goes to ``cryptography`` (:mod:`rcds.format.keys`), for its error or an unusual valid encoding.
Making keys, certificates and signatures is :mod:`rcds.format.keys`'s business.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash

if TYPE_CHECKING:
    from cryptography import x509

SEPARATOR = b"\n--\n"


class SignedText(NamedTuple):
    """A parsed envelope: the signed body, its hash string and the signature bytes."""

    body: bytes
    hash_string: str
    signature: bytes

    def check_hash(self, what: str) -> ContentHash:
        """Recompute the body hash with the algorithm of the hash line and compare."""
        claimed = ContentHash.parse(self.hash_string)
        found = ContentHash.of(self.body, claimed.algorithm)
        if found != claimed:
            raise IntegrityError(
                f"{what}: body hash mismatch, the file says {claimed.hex}, the body hashes to {found.hex}",
                what,
            )
        return claimed


def split(data: bytes, what: str) -> SignedText:
    """Split a signed root file as the stock verifier does (first ``\\n--\\n`` wins)."""
    pos = data.find(SEPARATOR)
    if pos < 0:
        raise IntegrityError(f"{what} has no '--' signature separator line", what)
    body = data[: pos + 1]
    rest = data[pos + len(SEPARATOR) :]
    nl = rest.find(b"\n")
    if nl < 0:
        raise IntegrityError(f"{what} has no hash line after '--'", what)
    try:
        hash_string = rest[:nl].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} has a non-ASCII hash line", what) from None
    return SignedText(body, hash_string, rest[nl + 1 :])


def join(body: bytes, algorithm: Algorithm, signature_of: Callable[[str], bytes]) -> bytes:
    """Build an envelope: ``signature_of`` is called with the hash string and returns the signature."""
    if not body.endswith(b"\n"):
        raise ValueError("a signed body must end with a newline")
    hash_string = ContentHash.of(body, algorithm).hex
    signature = signature_of(hash_string)
    return body + b"--\n" + hash_string.encode("ascii") + b"\n" + signature


# -- keys and the repository certificate ---------------------------------------------------------


class PublicNumbers(Protocol):
    """The two numbers of an RSA public key."""

    @property
    def n(self) -> int:
        """The modulus."""

    @property
    def e(self) -> int:
        """The public exponent."""


class VerifyKey(Protocol):
    """What checking a signature needs of a key: its RSA numbers (``cryptography``'s keys fit)."""

    def public_numbers(self) -> PublicNumbers:
        """The key's RSA numbers."""


class RsaPublicKey(NamedTuple):
    """An RSA public key as plain numbers; enough to check signatures."""

    n: int
    e: int

    def public_numbers(self) -> RsaPublicKey:
        """Itself (the :class:`VerifyKey` interface)."""
        return self

    @property
    def key_size(self) -> int:
        """Bits of the modulus."""
        return self.n.bit_length()


class RepoCertificate(NamedTuple):
    """A repository certificate as the client uses it: its DER bytes (the whitelist fingerprint
    covers them) and its RSA public key (it checks the manifest signature)."""

    der: bytes
    key: RsaPublicKey

    def public_key(self) -> RsaPublicKey:
        """The certificate's RSA public key."""
        return self.key

    def fingerprint(self, algorithm: Algorithm = Algorithm.SHA1) -> str:
        """Whitelist fingerprint: hash of the DER, ``AB:CD:...`` plus the uppercased algorithm id."""
        return der_fingerprint(self.der, algorithm)

    def to_x509(self) -> x509.Certificate:
        """The full ``cryptography`` certificate object (subject, dates...)."""
        from cryptography import x509

        return x509.load_der_x509_certificate(self.der)


def der_fingerprint(der: bytes, algorithm: Algorithm = Algorithm.SHA1) -> str:
    """Whitelist fingerprint of a DER certificate: ``AB:CD:...`` plus the uppercased algorithm id."""
    digest = ContentHash.of(der, algorithm).digest
    return ":".join(f"{b:02X}" for b in digest) + algorithm.identifier.upper()


class _DerError(ValueError):
    pass


_SEQUENCE, _INTEGER, _BIT_STRING, _NULL, _OID = 0x30, 0x02, 0x03, 0x05, 0x06
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Tag, content start and content end of the DER element at ``pos`` (definite, minimal lengths)."""
    if pos + 2 > end:
        raise _DerError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise _DerError("multi-byte tag")
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > end or data[pos] == 0:
            raise _DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80:
            raise _DerError("non-minimal length")
        pos += count
    else:
        length = first
    if pos + length > end:
        raise _DerError("truncated")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    found, start, stop = _tlv(data, pos, end)
    if found != tag:
        raise _DerError(f"tag {found:#x} where {tag:#x} belongs")
    return start, stop


def _positive(data: bytes, start: int, stop: int) -> int:
    body = data[start:stop]
    if not body or body[0] & 0x80 or (len(body) > 1 and body[0] == 0 and not body[1] & 0x80):
        raise _DerError("not a minimal positive INTEGER")
    return int.from_bytes(body, "big")


def _rsa_public_key(data: bytes, pos: int, end: int) -> RsaPublicKey:
    """``RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }``, ending at ``end``."""
    start, stop = _expect(data, pos, end, _SEQUENCE)
    if stop != end:
        raise _DerError("trailing bytes")
    a, b = _expect(data, start, stop, _INTEGER)
    n = _positive(data, a, b)
    a, c = _expect(data, b, stop, _INTEGER)
    e = _positive(data, a, c)
    if c != stop or not n & 1 or not 512 <= n.bit_length() <= 16384 or e < 3 or not e & 1 or e >= n:
        raise _DerError("not a usable RSA public key")
    return RsaPublicKey(n, e)


def _spki(data: bytes, pos: int, end: int) -> RsaPublicKey:
    """``SubjectPublicKeyInfo`` with the rsaEncryption algorithm, ending at ``end``."""
    start, stop = _expect(data, pos, end, _SEQUENCE)
    if stop != end:
        raise _DerError("trailing bytes")
    a, b = _expect(data, start, stop, _SEQUENCE)  # AlgorithmIdentifier
    o1, o2 = _expect(data, a, b, _OID)
    if data[o1:o2] != _RSA_OID:
        raise _DerError("not an RSA key")
    if o2 != b:
        n1, n2 = _expect(data, o2, b, _NULL)
        if n1 != n2 or n2 != b:
            raise _DerError("bad algorithm parameters")
    s1, s2 = _expect(data, b, stop, _BIT_STRING)
    if s2 != stop or s1 >= s2 or data[s1] != 0:
        raise _DerError("bad key bit string")
    return _rsa_public_key(data, s1 + 1, s2)


def _pem_body(pem: bytes, label: bytes) -> bytes:
    """The DER of the first PEM block with ``label`` (strict base64, no headers)."""
    begin = b"-----BEGIN " + label + b"-----"
    start = pem.find(begin)
    if start < 0:
        raise _DerError("no PEM block")
    start += len(begin)
    stop = pem.find(b"-----END " + label + b"-----", start)
    if stop < 0:
        raise _DerError("unterminated PEM block")
    try:
        return binascii.a2b_base64(re.sub(rb"[ \t\r\n]+", b"", pem[start:stop]), strict_mode=True)
    except binascii.Error as exc:
        raise _DerError(str(exc)) from None


def _parse_certificate(pem: bytes) -> RepoCertificate:
    """``Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }``; the key is
    ``subjectPublicKeyInfo``, the field after subject in ``tbsCertificate``."""
    der = _pem_body(pem, b"CERTIFICATE")
    start, stop = _expect(der, 0, len(der), _SEQUENCE)
    if stop != len(der):
        raise _DerError("trailing bytes")
    t1, t2 = _expect(der, start, stop, _SEQUENCE)
    _, b = _expect(der, t2, stop, _SEQUENCE)  # signatureAlgorithm
    _, c = _expect(der, b, stop, _BIT_STRING)  # signature
    if c != stop:
        raise _DerError("trailing fields")
    pos = t1
    tag, _, after = _tlv(der, pos, t2)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = after
    for tag in (_INTEGER, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE):  # serial .. subject
        pos = _expect(der, pos, t2, tag)[1]
    tag, _, spki_end = _tlv(der, pos, t2)
    if tag != _SEQUENCE:
        raise _DerError("no subjectPublicKeyInfo")
    return RepoCertificate(der, _spki(der, pos, spki_end))


def load_verify_key(pem: bytes, what: str = "public key") -> RsaPublicKey:
    """An RSA public key from PEM (``BEGIN PUBLIC KEY`` or ``BEGIN RSA PUBLIC KEY``), for checks."""
    try:
        if b"-----BEGIN RSA PUBLIC KEY-----" in pem:
            der = _pem_body(pem, b"RSA PUBLIC KEY")
            return _rsa_public_key(der, 0, len(der))
        der = _pem_body(pem, b"PUBLIC KEY")
        return _spki(der, 0, len(der))
    except (_DerError, IndexError):
        from rcds.format.keys import load_public_key

        nums = load_public_key(pem, what).public_numbers()  # its error, or an unusual encoding
        return RsaPublicKey(nums.n, nums.e)


def load_verify_key_file(path: Path) -> RsaPublicKey:
    """A master key file (``<fqrn>.pub``) read for signature checks."""
    try:
        return load_verify_key(path.read_bytes(), str(path))
    except OSError as exc:
        raise IntegrityError(f"cannot read public key {path}: {exc.strerror}", str(path)) from None


def load_repository_certificate(pem: bytes, what: str = "certificate") -> RepoCertificate:
    """The first certificate of a PEM text, read for the trust chain (DER and RSA key)."""
    try:
        return _parse_certificate(pem)
    except (_DerError, IndexError):
        pass
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from rcds.format.keys import load_certificate

    cert = load_certificate(pem, what)  # its error, or an unusual encoding
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise IntegrityError("the repository certificate does not hold an RSA key", what)
    nums = key.public_numbers()
    return RepoCertificate(cert.public_bytes(serialization.Encoding.DER), RsaPublicKey(nums.n, nums.e))


# -- signatures ---------------------------------------------------------------------------------

SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")
"""DER ``DigestInfo`` prefix of a SHA-1 digest (RFC 8017 §9.2, note 1)."""


def type1_block(payload: bytes, k: int) -> bytes | None:
    """``00 01 FF..FF 00 payload`` of ``k`` bytes (at least 8 ``FF``), or None if it does not fit."""
    if len(payload) > k - 11:
        return None
    return b"\x00\x01" + b"\xff" * (k - 3 - len(payload)) + b"\x00" + payload


def _opened(key: VerifyKey, signature: bytes, exact: bool) -> tuple[bytes, int] | None:
    """The signature raised to the public exponent as a ``k``-byte block (``k``: modulus bytes).

    ``exact`` wants exactly ``k`` signature bytes (OpenSSL's ``RSA_verify``); otherwise shorter
    ones count too (``RSA_public_decrypt``, as ``openssl pkeyutl -verifyrecover``).
    """
    nums = key.public_numbers()
    n, e = nums.n, nums.e
    k = (n.bit_length() + 7) // 8
    if not signature or len(signature) > k or (exact and len(signature) != k):
        return None
    s = int.from_bytes(signature, "big")
    if s >= n:
        return None
    return pow(s, e, n).to_bytes(k, "big"), k


def verify_manifest_hash(key: VerifyKey, hash_string: str, signature: bytes) -> bool:
    """Check a manifest signature: PKCS#1 v1.5 with a SHA-1 DigestInfo over the ASCII hash string."""
    opened = _opened(key, signature, exact=True)
    if opened is None:
        return False
    block, k = opened
    return block == type1_block(SHA1_DIGEST_INFO + hashlib.sha1(hash_string.encode("ascii")).digest(), k)


def verify_raw(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    """Check a raw PKCS#1 v1.5 type-1 signature: it must open to exactly the padded ``message``."""
    opened = _opened(key, signature, exact=False)
    if opened is None:
        return False
    block, k = opened
    expected = type1_block(message, k)
    return expected is not None and block == expected
