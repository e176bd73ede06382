"""Just enough DER reading for the RFC 3820 proxyCertInfo extension."""

from __future__ import annotations

__all__ = ["parse_proxy_cert_info"]


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


def parse_proxy_cert_info(der: bytes) -> tuple[int | None, str]:
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
