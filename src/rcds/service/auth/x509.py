"""Client-certificate chains: verification, grid proxies, and the end-entity DN.

Grid clients authenticate with X.509 *proxy* certificates: short-lived certificates signed by
the user's own certificate (or by another proxy), whose subject is the signer's subject plus
one more ``CN``.  Two kinds exist:

* RFC 3820 proxies carry the critical proxyCertInfo extension (OID 1.3.6.1.5.5.7.1.14) with an
  optional path length (how many proxies may be signed below it) and a policy language
  (inheritAll; Globus "limited"; "independent" proxies carry none of the signer's rights and
  are refused);
* legacy Globus (GT2) proxies have no extension; the extra RDN is ``CN=proxy`` or
  ``CN=limited proxy``.

:func:`verify_chain` takes the chain as the client presented it (leaf first: proxies, then the
user certificate, then any intermediate CAs), checks every certificate's validity period,
signature and role, the proxy rules, and a path from the user certificate to a CA of a
:class:`TrustStore`, and returns the user's DN in the OpenSSL/Globus slash form used by
grid-mapfiles (``/DC=org/DC=example/O=Test/CN=Alice``).

Not done here: CRLs and IGTF ``.signing_policy``/``.namespaces`` files.  Name constraints are
not enforced here either; when the chain comes through :mod:`rcds.service.auth.tls`, OpenSSL
has already verified it (including name constraints) during the handshake.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from rcds.errors import AuthError, ConfigError

__all__ = [
    "PROXY_CERT_INFO_OID",
    "TrustStore",
    "VerifiedChain",
    "dn_string",
    "load_certificates",
    "verify_chain",
]

log = logging.getLogger(__name__)

PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_GT3_PROXY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
_PPL_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
_PPL_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
_PPL_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"

#: Extensions whose criticality we understand (anything else critical is refused).
_KNOWN_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.INHIBIT_ANY_POLICY,
    ExtensionOID.NAME_CONSTRAINTS,
    PROXY_CERT_INFO_OID,
}

#: OpenSSL short names of name attributes, as ``X509_NAME_oneline`` prints them.
_SHORT_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L",
    "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "title",
    "2.5.4.13": "description", "2.5.4.15": "businessCategory", "2.5.4.17": "postalCode",
    "2.5.4.41": "name", "2.5.4.42": "GN", "2.5.4.43": "initials", "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym", "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID", "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL", "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}  # fmt: skip

_CA_FILE_RE = re.compile(r"\.(pem|crt|\d+)$")


def _fail(problem: str) -> AuthError:
    return AuthError(f"client certificate rejected: {problem}", status=401)


def _value_bytes(attr: x509.NameAttribute[Any]) -> bytes:
    """The attribute value's bytes as encoded in the certificate."""
    value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
    kind = getattr(getattr(attr, "_type", None), "name", "UTF8String")
    if kind == "BMPString":
        return value.encode("utf-16-be")
    if kind == "UniversalString":
        return value.encode("utf-32-be")
    if kind in ("PrintableString", "IA5String", "NumericString", "VisibleString", "T61String"):
        return value.encode("latin-1", errors="replace")
    return value.encode("utf-8")


def dn_string(name: x509.Name) -> str:
    """The OpenSSL/Globus one-line form of a name: ``/DC=org/DC=example/O=Test/CN=Alice``.

    Like OpenSSL's ``X509_NAME_oneline`` before 3.0 (and mod_ssl's LegacyDNStringFormat, which
    grid-mapfiles are written against): attributes of a multi-valued RDN are joined with
    ``+``, bytes outside printable ASCII are written ``\\xHH``, and ``/`` and ``+`` inside
    values are not escaped (OpenSSL 3.0 escapes them; :mod:`~rcds.service.auth.gridmap`
    accepts both forms).
    """
    out: list[str] = []
    for rdn in name.rdns:
        parts = []
        for attr in rdn:
            oid = attr.oid.dotted_string
            value = "".join(chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02X}" for b in _value_bytes(attr))
            parts.append(f"{_SHORT_NAMES.get(oid, oid)}={value}")
        out.append("/" + "+".join(parts))
    return "".join(out)


def load_certificates(items: Iterable[x509.Certificate | bytes]) -> list[x509.Certificate]:
    """Turn certificates given as objects, DER or PEM bytes into objects (order kept).

    PEM bytes may hold several certificates.  Raises :class:`AuthError` (401) for anything
    that does not parse.
    """
    certs: list[x509.Certificate] = []
    for item in items:
        if isinstance(item, x509.Certificate):
            certs.append(item)
            continue
        try:
            if item.lstrip().startswith(b"-----BEGIN"):
                certs.extend(x509.load_pem_x509_certificates(item))
            else:
                certs.append(x509.load_der_x509_certificate(item))
        except ValueError as e:
            raise _fail(f"unparsable certificate: {e}") from None
    return certs


class TrustStore:
    """The CA certificates trusted to issue client certificates."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self._certs: list[x509.Certificate] = []
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        seen: set[bytes] = set()
        for cert in certificates:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der in seen:
                continue
            seen.add(der)
            self._certs.append(cert)
            self._by_subject.setdefault(cert.subject, []).append(cert)

    @classmethod
    def from_directory(cls, directory: str | Path) -> TrustStore:
        """Load every ``*.pem``, ``*.crt`` and ``*.<digits>`` file (e.g. ``1a2b3c4d.0``) of a
        directory such as ``/etc/grid-security/certificates``.

        Other files (``.signing_policy``, ``.namespaces``, ``.r0`` CRLs, ...) are ignored;
        unparsable certificate files are logged and skipped.  Raises :class:`ConfigError` if
        the directory cannot be read or holds no certificate.
        """
        d = Path(directory)
        try:
            names = sorted(p for p in d.iterdir() if _CA_FILE_RE.search(p.name) and p.is_file())
        except OSError as e:
            raise ConfigError(f"{d}: cannot read CA directory: {e.strerror or e}") from e
        certs: list[x509.Certificate] = []
        for p in names:
            try:
                certs.extend(x509.load_pem_x509_certificates(p.read_bytes()))
            except (OSError, ValueError) as e:
                log.warning("skipping CA file %s: %s", p, e)
        if not certs:
            raise ConfigError(f"{d}: no CA certificates (*.pem, *.crt, *.0) found")
        return cls(certs)

    @classmethod
    def from_pem_file(cls, path: str | Path) -> TrustStore:
        """Load all certificates of a PEM bundle; raises :class:`ConfigError` on failure."""
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot load CA certificates: {e}") from e
        return cls(certs)

    @classmethod
    def load(cls, ca_dir: str | Path | None = None, ca_file: str | Path | None = None) -> TrustStore:
        """Combine a CA directory and a CA bundle (either may be omitted, not both)."""
        if ca_dir is None and ca_file is None:
            raise ConfigError("no CA directory or CA file given for client certificates")
        certs: list[x509.Certificate] = []
        if ca_dir is not None:
            certs += cls.from_directory(ca_dir).certificates
        if ca_file is not None:
            certs += cls.from_pem_file(ca_file).certificates
        return cls(certs)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """All trusted certificates."""
        return tuple(self._certs)

    def pem(self) -> str:
        """All trusted certificates as one PEM string (for ``SSLContext.load_verify_locations``)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._certs).decode("ascii")

    def by_subject(self, name: x509.Name) -> list[x509.Certificate]:
        """The trusted certificates whose subject is ``name``."""
        return list(self._by_subject.get(name, ()))

    def __len__(self) -> int:
        return len(self._certs)


@dataclass(frozen=True)
class VerifiedChain:
    """The result of :func:`verify_chain`.

    ``dn`` is the end-entity (user) DN in slash form; ``proxies`` the proxy certificates, leaf
    first; ``ca_path`` the CA certificates from the user certificate's issuer up to the
    trusted one; ``proxy_style`` ``"rfc"``, ``"legacy"`` or ``None``; ``limited`` whether any
    proxy is a limited proxy; ``expires`` the earliest end of validity in the chain.
    """

    dn: str
    end_entity: x509.Certificate
    proxies: tuple[x509.Certificate, ...]
    ca_path: tuple[x509.Certificate, ...]
    proxy_style: str | None
    limited: bool
    expires: dt.datetime

    @property
    def short_name(self) -> str:
        """What today's server records as the publisher: the value after ``CN=UID:`` in a CN,
        else the last CN, else the whole DN."""
        cns = [str(a.value) for a in self.end_entity.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        for cn in cns:
            if cn.startswith("UID:"):
                return cn[4:]
        return cns[-1] if cns else self.dn


# --- DER reading for proxyCertInfo ---------------------------------------------------------------


def _der_item(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``: (tag, value, next position)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def _der_oid(body: bytes) -> str:
    if not body:
        raise ValueError("empty OID")
    parts = [body[0] // 40, body[0] % 40] if body[0] < 80 else [2, body[0] - 80]
    n = 0
    for b in body[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def _parse_proxy_cert_info(der: bytes) -> tuple[int | None, str]:
    """ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
    proxyPolicy SEQUENCE { policyLanguage OID, policy OCTET STRING OPTIONAL } }."""
    tag, body, end = _der_item(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a SEQUENCE")
    pos, path_len = 0, None
    tag, value, pos = _der_item(body, pos)
    if tag == 0x02:
        path_len = int.from_bytes(value, "big", signed=True)
        if path_len < 0:
            raise ValueError("negative path length")
        tag, value, pos = _der_item(body, pos)
    if tag != 0x30 or pos != len(body):
        raise ValueError("bad proxyPolicy")
    tag, oid, _ = _der_item(value, 0)
    if tag != 0x06:
        raise ValueError("bad policyLanguage")
    return path_len, _der_oid(oid)


# --- checks ----------------------------------------------------------------------------------------


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        raise _fail(f"malformed extension in {dn_string(cert.subject)}: {e}") from None


def _common_checks(cert: x509.Certificate, what: str, when: dt.datetime) -> None:
    dn = dn_string(cert.subject)
    if when < cert.not_valid_before_utc:
        raise _fail(f"{what} {dn} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if when > cert.not_valid_after_utc:
        raise _fail(f"{what} {dn} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    try:
        exts = list(cert.extensions)
    except ValueError as e:
        raise _fail(f"malformed extensions in {what} {dn}: {e}") from None
    for ext in exts:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise _fail(f"{what} {dn} has an unknown critical extension {ext.oid.dotted_string}")


def _is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    ext = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if ext is None:
        return False, None
    bc = ext.value
    assert isinstance(bc, x509.BasicConstraints)
    return bc.ca, bc.path_length


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    ext = _ext(cert, ExtensionOID.KEY_USAGE)
    return ext.value if ext is not None and isinstance(ext.value, x509.KeyUsage) else None


def _check_client_eku(cert: x509.Certificate, what: str) -> None:
    ext = _ext(cert, ExtensionOID.EXTENDED_KEY_USAGE)
    if ext is None:
        return
    usages = list(ext.value) if isinstance(ext.value, x509.ExtendedKeyUsage) else []
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH not in usages
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages
    ):
        raise _fail(f"{what} {dn_string(cert.subject)} is not allowed for TLS client authentication")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer`` signed ``cert``, else why not."""
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "signature does not verify"
    except (ValueError, TypeError) as e:
        return str(e) or type(e).__name__
    return None


def _proxy_kind(cert: x509.Certificate) -> tuple[str | None, x509.Extension[x509.ExtensionType] | None]:
    ext = _ext(cert, PROXY_CERT_INFO_OID)
    if ext is not None:
        return "rfc", ext
    if _ext(cert, _GT3_PROXY_OID) is not None:
        raise _fail(f"pre-RFC (GT3) proxy certificates are not supported: {dn_string(cert.subject)}")
    rdns = cert.subject.rdns
    if rdns:
        last = list(rdns[-1])
        if (
            len(last) == 1
            and last[0].oid == NameOID.COMMON_NAME
            and last[0].value in ("proxy", "limited proxy")
            and x509.Name(rdns[:-1]) == cert.issuer
        ):
            return "legacy", None
    return None, None


def _check_proxy(
    proxy: x509.Certificate,
    issuer: x509.Certificate,
    style: str,
    ext: x509.Extension[x509.ExtensionType] | None,
    proxies_below: int,
    when: dt.datetime,
) -> bool:
    """Check one proxy against the certificate that signed it; return whether it is limited."""
    dn, issuer_dn = dn_string(proxy.subject), dn_string(issuer.subject)
    if proxy.issuer != issuer.subject:
        raise _fail(
            f"proxy {dn} was issued by {dn_string(proxy.issuer)}, but the next certificate is {issuer_dn}"
        )
    rdns = proxy.subject.rdns
    last = list(rdns[-1]) if rdns else []
    if (
        x509.Name(rdns[:-1]) != issuer.subject
        or len(last) != 1
        or last[0].oid != NameOID.COMMON_NAME
        or not last[0].value
    ):
        raise _fail(f"proxy subject {dn} is not its issuer's subject {issuer_dn} plus one CN")
    if (why := _issued_by(proxy, issuer)) is not None:
        raise _fail(f"proxy {dn} was not signed by {issuer_dn}: {why}")
    _common_checks(proxy, "proxy", when)
    _check_client_eku(proxy, "proxy")
    if _is_ca(proxy)[0]:
        raise _fail(f"proxy {dn} claims to be a CA")
    if _is_ca(issuer)[0]:
        raise _fail(
            f"proxy {dn} was signed by a CA certificate; only user certificates and proxies sign proxies"
        )
    ku = _key_usage(issuer)
    if ku is not None and not ku.digital_signature:
        raise _fail(f"{issuer_dn} may not sign proxies (no digitalSignature key usage)")
    if _ext(proxy, ExtensionOID.SUBJECT_ALTERNATIVE_NAME) or _ext(
        proxy, ExtensionOID.ISSUER_ALTERNATIVE_NAME
    ):
        raise _fail(f"proxy {dn} has a subject or issuer alternative name")
    if style == "legacy":
        return last[0].value == "limited proxy"
    assert ext is not None
    if not ext.critical:
        raise _fail(f"proxy {dn}: the proxyCertInfo extension must be critical")
    raw = ext.value
    assert isinstance(raw, x509.UnrecognizedExtension)
    try:
        path_len, language = _parse_proxy_cert_info(raw.value)
    except ValueError as e:
        raise _fail(f"proxy {dn}: malformed proxyCertInfo: {e}") from None
    if path_len is not None and proxies_below > path_len:
        raise _fail(f"proxy {dn} allows {path_len} proxies below it, the chain has {proxies_below}")
    if language == _PPL_INDEPENDENT:
        raise _fail(f"proxy {dn} is an independent proxy, which carries no rights of {issuer_dn}")
    if language not in (_PPL_INHERIT_ALL, _PPL_LIMITED):
        raise _fail(f"proxy {dn} has an unsupported policy language {language}")
    return language == _PPL_LIMITED


def _check_ca(ca: x509.Certificate, when: dt.datetime, cas_below: int) -> None:
    dn = dn_string(ca.subject)
    is_ca, path_len = _is_ca(ca)
    if not is_ca:
        raise _fail(f"{dn} is not a CA certificate")
    ku = _key_usage(ca)
    if ku is not None and not ku.key_cert_sign:
        raise _fail(f"CA {dn} may not sign certificates (no keyCertSign key usage)")
    if path_len is not None and cas_below > path_len:
        raise _fail(f"CA {dn} allows {path_len} intermediate CAs below it, the path has {cas_below}")
    _common_checks(ca, "CA certificate", when)


def _ca_path(
    ee: x509.Certificate,
    presented: Sequence[x509.Certificate],
    trust: TrustStore,
    when: dt.datetime,
    limit: int,
) -> tuple[x509.Certificate, ...]:
    path: list[x509.Certificate] = []
    cur = ee
    for _ in range(limit):
        problems: list[str] = []
        for anchor in trust.by_subject(cur.issuer):
            why = _issued_by(cur, anchor)
            if why is None:
                _check_ca(anchor, when, len(path))
                return (*path, anchor)
            problems.append(f"trusted CA {dn_string(anchor.subject)}: {why}")
        for cand in presented:
            if cand.subject != cur.issuer or any(cand is p for p in path):
                continue
            why = _issued_by(cur, cand)
            if why is None:
                _check_ca(cand, when, len(path))
                path.append(cand)
                cur = cand
                break
            problems.append(f"{dn_string(cand.subject)}: {why}")
        else:
            detail = f" ({'; '.join(problems)})" if problems else ""
            raise _fail(f"{dn_string(cur.subject)} was not issued by a trusted CA{detail}")
    raise _fail(f"no trusted CA within {limit} certificates")


def verify_chain(
    chain: Sequence[x509.Certificate | bytes],
    trust: TrustStore,
    *,
    now: dt.datetime | None = None,
    max_length: int = 10,
) -> VerifiedChain:
    """Verify a presented client certificate chain and return the end-entity DN and details.

    ``chain`` is leaf first: optional proxies (RFC 3820 or legacy, not mixed), the user
    certificate, then optional intermediate CAs (the trusted CA itself may be included or
    not).  ``now`` defaults to the current time (a naive value is taken as UTC).  Raises
    :class:`AuthError` with status 401 and a one-line reason when the chain is unacceptable.
    """
    certs = load_certificates(chain)
    if not certs:
        raise _fail("no certificate presented")
    if len(certs) > max_length:
        raise _fail(f"chain of {len(certs)} certificates is longer than {max_length}")
    when = now or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)

    proxies: list[x509.Certificate] = []
    style: str | None = None
    limited = False
    i = 0
    while True:
        kind, ext = _proxy_kind(certs[i])
        if kind is None:
            break
        if style is not None and kind != style:
            raise _fail("the chain mixes RFC 3820 and legacy proxies")
        style = kind
        if i + 1 >= len(certs):
            raise _fail(f"proxy {dn_string(certs[i].subject)} came without the certificate that signed it")
        limited |= _check_proxy(certs[i], certs[i + 1], kind, ext, i, when)
        proxies.append(certs[i])
        i += 1

    ee = certs[i]
    is_ca, _ = _is_ca(ee)
    if is_ca:
        raise _fail(f"{dn_string(ee.subject)} is a CA certificate, not a user certificate")
    _common_checks(ee, "certificate", when)
    _check_client_eku(ee, "certificate")
    ca_path = _ca_path(ee, certs[i + 1 :], trust, when, max_length)
    return VerifiedChain(
        dn=dn_string(ee.subject),
        end_entity=ee,
        proxies=tuple(proxies),
        ca_path=ca_path,
        proxy_style=style,
        limited=limited,
        expires=min(c.not_valid_after_utc for c in (ee, *proxies)),
    )
