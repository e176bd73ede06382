"""Certificate names in the OpenSSL/Globus one-line slash form used by grid-mapfiles."""

from __future__ import annotations

from typing import Any

from cryptography import x509

__all__ = ["dn_string"]

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
