"""Throw-away PKI and token factory for the service tests.

Makes CAs (roots and intermediates), user certificates, RFC 3820 and legacy Globus proxy
certificates (also deliberately broken ones), CA directories like
``/etc/grid-security/certificates``, and signed JWT bearer tokens with RSA or EC keys.

The tests directories have no ``__init__.py``; pytest puts this directory on ``sys.path``, so
test modules here do ``import pki``.  ``conftest.py`` wraps the common objects in fixtures.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
PPL_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
PPL_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
PPL_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"

#: Token issuers and audience used across the tests.
ISSUER = "https://issuer.example.org/rcds"
OTHER_ISSUER = "https://other-issuer.example.org"
AUDIENCE = "https://rcds.example.org"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyType = Literal["ec", "rsa"]

_ATTRS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
}


def now() -> dt.datetime:
    """The current time, aware, truncated to seconds (certificate times have no fractions)."""
    return dt.datetime.now(UTC).replace(microsecond=0)


def name(slash: str) -> x509.Name:
    """``"/DC=org/CN=Alice"`` -> :class:`x509.Name` (no escapes; attributes from ``_ATTRS``)."""
    rdns = []
    for part in slash.strip("/").split("/"):
        typ, _, value = part.partition("=")
        # cryptography encodes DC and emailAddress as IA5String, C as PrintableString.
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(_ATTRS[typ], value)]))
    return x509.Name(rdns)


def append_cn(base: x509.Name, cn: str) -> x509.Name:
    """``base`` with one more ``CN=cn`` RDN at the end (what a proxy's subject is)."""
    return x509.Name(
        [*base.rdns, x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])]
    )


def new_key(kind: KeyType = "ec") -> PrivateKey:
    """A fresh P-256 or RSA-2048 private key."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    """Concatenated PEM of certificates."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# --- minimal DER encoding for the proxyCertInfo extension ------------------------------------


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def proxy_cert_info(
    path_length: int | None = None, policy: str = PPL_INHERIT_ALL, policy_bytes: bytes | None = None
) -> bytes:
    """DER of an RFC 3820 ProxyCertInfo value."""
    pol = _der_oid(policy) + (_der(0x04, policy_bytes) if policy_bytes is not None else b"")
    body = (_der_int(path_length) if path_length is not None else b"") + _der(0x30, pol)
    return _der(0x30, body)


# --- certificates ------------------------------------------------------------------------------


@dataclass
class Credential:
    """A certificate, its key, and the certificates above it that a client sends (no root)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def presented(self) -> list[x509.Certificate]:
        """What a TLS client presents: this certificate first, then the chain."""
        return [self.cert, *self.chain]

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.pem`` (certificate + chain) and ``<stem>.key``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        certfile, keyfile = directory / f"{stem}.pem", directory / f"{stem}.key"
        certfile.write_bytes(cert_pem(*self.presented))
        keyfile.write_bytes(key_pem(self.key))
        keyfile.chmod(0o600)
        return certfile, keyfile


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: Any,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> x509.CertificateBuilder:
    t = now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or t - dt.timedelta(hours=1))
        .not_valid_after(not_after or t + dt.timedelta(days=30))
    )


def key_usage(*, signs_certificates: bool = False, digital_signature: bool = True) -> x509.KeyUsage:
    """A CA's key usage (certificates and CRLs only), or an end entity's or proxy's
    (key encipherment, and digital signature unless told otherwise)."""
    end_entity = not signs_certificates
    return x509.KeyUsage(
        digital_signature=end_entity and digital_signature, content_commitment=False,
        key_encipherment=end_entity, data_encipherment=False, key_agreement=False,
        key_cert_sign=signs_certificates, crl_sign=signs_certificates,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _ski(b: x509.CertificateBuilder, public_key: Any) -> x509.CertificateBuilder:
    return b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)


@dataclass
class CA:
    """A certification authority: a root, or an intermediate when ``parent`` is given."""

    subject: str = "/DC=org/DC=example/CN=Example Test CA"
    key_type: KeyType = "ec"
    parent: CA | None = None
    path_length: int | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    key: PrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.key = new_key(self.key_type)
        issuer_name = self.parent.cert.subject if self.parent else name(self.subject)
        b = _builder(name(self.subject), issuer_name, self.key.public_key(), self.not_before, self.not_after)
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=self.path_length), critical=True)
        b = b.add_extension(key_usage(signs_certificates=True), critical=True)
        b = _ski(b, self.key.public_key())
        signer = self.parent.key if self.parent else self.key
        self.cert = b.sign(signer, hashes.SHA256())

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA's certificate and its intermediates above it, without the root."""
        if self.parent is None:
            return ()
        return (self.cert, *self.parent.chain)

    def intermediate(self, subject: str, **kw: Any) -> CA:
        """A CA certified by this one."""
        return CA(subject=subject, parent=self, **kw)

    def issue(
        self,
        subject: str = "/DC=org/DC=example/O=Test/CN=Alice Smith",
        *,
        key_type: KeyType = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        server: bool = False,
        ca_flag: bool | None = False,
        eku: Sequence[x509.ObjectIdentifier] | None = None,
        digital_signature: bool = True,
        subject_name: x509.Name | None = None,
        sans: Iterable[str] = (),
    ) -> Credential:
        """An end-entity (user, or ``server=True`` host) certificate."""
        key = new_key(key_type)
        subj = subject_name or name(subject)
        b = _builder(subj, self.cert.subject, key.public_key(), not_before, not_after)
        if ca_flag is not None:
            b = b.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        b = b.add_extension(key_usage(digital_signature=digital_signature), critical=True)
        if eku is None:
            eku = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        san_list = list(sans)
        if san_list:
            b = b.add_extension(
                x509.SubjectAlternativeName([_general_name(s) for s in san_list]), critical=False
            )
        b = _ski(b, key.public_key())
        return Credential(b.sign(self.key, hashes.SHA256()), key, self.chain)


def _general_name(s: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(s))
    except ValueError:
        return x509.DNSName(s)


def proxy(
    issuer: Credential,
    *,
    style: Literal["rfc", "legacy"] = "rfc",
    limited: bool = False,
    cn: str | None = None,
    path_length: int | None = None,
    policy: str | None = None,
    critical: bool = True,
    signing_key: PrivateKey | None = None,
    subject_name: x509.Name | None = None,
    issuer_name: x509.Name | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_type: KeyType = "ec",
    ca_flag: bool | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Credential:
    """A proxy certificate signed by ``issuer``'s key (a user certificate or another proxy).

    RFC 3820 style: subject = issuer subject + ``CN=<serial>``, critical proxyCertInfo with
    ``path_length`` and ``policy`` (inheritAll, or the Globus "limited" language when
    ``limited``).  Legacy style: subject = issuer subject + ``CN=proxy`` (``CN=limited
    proxy``), no proxyCertInfo.  The remaining arguments break it on purpose.
    """
    key = new_key(key_type)
    serial = x509.random_serial_number()
    if cn is None:
        cn = str(serial % 10**10) if style == "rfc" else ("limited proxy" if limited else "proxy")
    subj = subject_name or append_cn(issuer.cert.subject, cn)
    t = now()
    b = (
        x509.CertificateBuilder()
        .subject_name(subj)
        .issuer_name(issuer_name or issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before or t - dt.timedelta(minutes=5))
        .not_valid_after(not_after or t + dt.timedelta(hours=12))
    )
    if style == "rfc":
        pol = policy or (PPL_LIMITED if limited else PPL_INHERIT_ALL)
        b = b.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info(path_length, pol)),
            critical=critical,
        )
    b = b.add_extension(key_usage(digital_signature=True), critical=True)
    if ca_flag is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
    for ext, crit in extra_extensions:
        b = b.add_extension(ext, critical=crit)
    cert = b.sign(signing_key or issuer.key, hashes.SHA256())
    return Credential(cert, key, (issuer.cert, *issuer.chain))


def write_ca_dir(directory: Path, *cas: CA, extra_files: dict[str, bytes] | None = None) -> Path:
    """A grid-security style CA directory: ``<n>.0`` hash-like names plus ``.pem`` copies."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, ca in enumerate(cas):
        stem = f"{i:08x}"
        (directory / f"{stem}.0").write_bytes(cert_pem(ca.cert))
        (directory / f"{stem}.signing_policy").write_text("access_id_CA X509 '/DC=org'\n")
    for fname, data in (extra_files or {}).items():
        (directory / fname).write_bytes(data)
    return directory


# --- tokens ------------------------------------------------------------------------------------


def _b64u(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class TokenKey:
    """An issuer signing key: RS256 (RSA-2048) or ES256 (P-256)."""

    alg: Literal["RS256", "ES256"] = "RS256"
    kid: str = field(default_factory=lambda: secrets.token_hex(4))
    key: PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = new_key("rsa" if self.alg == "RS256" else "ec")

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK."""
        pub = self.key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            return {
                "kty": "RSA",
                "kid": self.kid,
                "alg": self.alg,
                "use": "sig",
                "n": _b64u(nums.n),
                "e": _b64u(nums.e),
            }
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pn = pub.public_numbers()
        size = 32
        return {
            "kty": "EC", "kid": self.kid, "alg": self.alg, "use": "sig", "crv": "P-256",
            "x": base64.urlsafe_b64encode(pn.x.to_bytes(size, "big")).rstrip(b"=").decode(),
            "y": base64.urlsafe_b64encode(pn.y.to_bytes(size, "big")).rstrip(b"=").decode(),
        }  # fmt: skip

    def sign(self, claims: dict[str, Any], *, kid: bool = True, headers: dict[str, Any] | None = None) -> str:
        """A compact JWS of ``claims``."""
        hdr = {"kid": self.kid} if kid else {}
        hdr.update(headers or {})
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=hdr or None)


def write_jwks(path: Path, *keys: TokenKey) -> Path:
    """Write a JWKS JSON file holding the public keys."""
    path.write_text(json.dumps({"keys": [k.jwk() for k in keys]}, indent=1))
    return path


def claims(
    iss: str,
    *,
    sub: str = "alice-0001",
    aud: str | list[str] = "https://rcds.example.org",
    scope: str | None = "compute.create",
    groups: Sequence[str] | None = ("/dune",),
    issued: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(hours=1),
    **extra: Any,
) -> dict[str, Any]:
    """WLCG-profile token claims, valid from ``issued`` (default now) for ``lifetime``."""
    t = int((issued or now()).timestamp())
    c: dict[str, Any] = {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": t,
        "nbf": t,
        "exp": t + int(lifetime.total_seconds()),
        "jti": secrets.token_hex(8),
        "wlcg.ver": "1.0",
    }
    if scope is not None:
        c["scope"] = scope
    if groups is not None:
        c["wlcg.groups"] = list(groups)
    c.update(extra)
    return c
