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
:class:`~rcds.service.auth.truststore.TrustStore`, and returns the user's DN in the
OpenSSL/Globus slash form used by grid-mapfiles (``/DC=org/DC=example/O=Test/CN=Alice``).

Not done here: CRLs and IGTF ``.signing_policy``/``.namespaces`` files.  Name constraints are
not enforced here either; when the chain comes through :mod:`rcds.service.auth.tls`, OpenSSL
has already verified it (including name constraints) during the handshake.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from rcds.errors import AuthError
from rcds.service.auth._der import parse_proxy_cert_info
from rcds.service.auth.dn import dn_string
from rcds.service.auth.truststore import TrustStore, load_certificates

__all__ = [
    "PROXY_CERT_INFO_OID",
    "TrustStore",
    "VerifiedChain",
    "dn_string",
    "load_certificates",
    "verify_chain",
]

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


def _fail(problem: str) -> AuthError:
    return AuthError(f"client certificate rejected: {problem}", status=401)


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
        path_len, language = parse_proxy_cert_info(raw.value)
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
