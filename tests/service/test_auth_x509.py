"""Client certificate chains: CA paths, RFC 3820 and legacy proxies, DN formatting."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rcds.errors import AuthError, ConfigError
from rcds.service.auth._der import parse_proxy_cert_info
from rcds.service.auth.x509 import TrustStore, dn_string, load_certificates, verify_chain

import pki

ALICE = "/DC=org/DC=example/O=Test/CN=Alice Smith"


def rejected(chain: list[x509.Certificate], trust: TrustStore, match: str, **kw: object) -> None:
    with pytest.raises(AuthError, match=match) as info:
        verify_chain(chain, trust, **kw)  # type: ignore[arg-type]
    assert info.value.status == 401


# --- accepted chains -------------------------------------------------------------------------


def test_plain_user_certificate(alice: pki.Credential, trust: TrustStore, ca: pki.CA) -> None:
    v = verify_chain([alice.cert], trust)
    assert v.dn == ALICE
    assert v.proxies == () and v.proxy_style is None and not v.limited
    assert v.ca_path == (ca.cert,)
    assert v.short_name == "Alice Smith"
    assert v.expires == alice.cert.not_valid_after_utc


def test_der_and_pem_input(alice: pki.Credential, trust: TrustStore) -> None:
    der = alice.cert.public_bytes(serialization.Encoding.DER)
    assert verify_chain([der], trust).dn == ALICE
    assert verify_chain([pki.cert_pem(alice.cert)], trust).dn == ALICE


def test_rfc_proxy(alice: pki.Credential, trust: TrustStore) -> None:
    p = pki.proxy(alice)
    v = verify_chain(p.presented, trust)
    assert v.dn == ALICE
    assert v.proxies == (p.cert,) and v.proxy_style == "rfc" and not v.limited
    assert dn_string(p.cert.subject).startswith(ALICE + "/CN=")
    assert v.expires == p.cert.not_valid_after_utc


def test_rfc_proxy_of_proxy_with_rsa_keys(alice: pki.Credential, trust: TrustStore) -> None:
    p1 = pki.proxy(alice, key_type="rsa")
    p2 = pki.proxy(p1)
    p3 = pki.proxy(p2, path_length=0)
    v = verify_chain(p3.presented, trust)
    assert v.dn == ALICE and len(v.proxies) == 3


def test_rfc_limited_proxy(alice: pki.Credential, trust: TrustStore) -> None:
    v = verify_chain(pki.proxy(pki.proxy(alice, limited=True)).presented, trust)
    assert v.limited and v.dn == ALICE


@pytest.mark.parametrize("limited", [False, True])
def test_legacy_proxy(alice: pki.Credential, trust: TrustStore, limited: bool) -> None:
    p = pki.proxy(alice, style="legacy", limited=limited)
    assert dn_string(p.cert.subject) == ALICE + ("/CN=limited proxy" if limited else "/CN=proxy")
    v = verify_chain(p.presented, trust)
    assert v.dn == ALICE and v.proxy_style == "legacy" and v.limited is limited


def test_intermediate_ca_presented_by_client(ca: pki.CA, trust: TrustStore) -> None:
    inter = ca.intermediate("/DC=org/DC=example/CN=Example Issuing CA")
    bob = inter.issue("/DC=org/DC=example/O=Test/CN=Bob")
    assert bob.chain == (inter.cert,)
    v = verify_chain(pki.proxy(bob).presented, trust)
    assert v.dn == "/DC=org/DC=example/O=Test/CN=Bob"
    assert v.ca_path == (inter.cert, ca.cert)
    # also when the client sends the root too
    assert verify_chain([*bob.presented, ca.cert], trust).dn == "/DC=org/DC=example/O=Test/CN=Bob"
    # without the intermediate there is no path
    rejected([bob.cert], trust, "not issued by a trusted CA")
    # unless the intermediate is itself trusted
    assert verify_chain([bob.cert], TrustStore([inter.cert])).dn.endswith("CN=Bob")


def test_now_is_injectable(alice: pki.Credential, trust: TrustStore) -> None:
    p = pki.proxy(alice)
    later = p.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    rejected(p.presented, trust, "expired", now=later)
    naive = (p.cert.not_valid_after_utc - dt.timedelta(seconds=1)).replace(tzinfo=None)
    assert verify_chain(p.presented, trust, now=naive).dn == ALICE


# --- rejected chains -------------------------------------------------------------------------


def test_expired_user_certificate(ca: pki.CA, trust: TrustStore) -> None:
    t = pki.now()
    old = ca.issue(ALICE, not_before=t - dt.timedelta(days=10), not_after=t - dt.timedelta(days=1))
    rejected([old.cert], trust, r"certificate .*CN=Alice Smith expired at")
    rejected(pki.proxy(old).presented, trust, "expired")


def test_not_yet_valid(ca: pki.CA, trust: TrustStore) -> None:
    t = pki.now()
    future = ca.issue(ALICE, not_before=t + dt.timedelta(days=1), not_after=t + dt.timedelta(days=2))
    rejected([future.cert], trust, "not valid before")


def test_expired_proxy(alice: pki.Credential, trust: TrustStore) -> None:
    t = pki.now()
    p = pki.proxy(alice, not_before=t - dt.timedelta(hours=2), not_after=t - dt.timedelta(hours=1))
    rejected(p.presented, trust, r"proxy .* expired")


def test_expired_ca(trust: TrustStore) -> None:
    t = pki.now()
    old_ca = pki.CA(
        "/DC=org/DC=example/CN=Old CA",
        not_before=t - dt.timedelta(days=9),
        not_after=t - dt.timedelta(days=1),
    )
    user = old_ca.issue(ALICE, not_after=t + dt.timedelta(days=1))
    rejected([user.cert], TrustStore([old_ca.cert]), r"CA certificate .*Old CA expired")


def test_wrong_ca(other_ca: pki.CA, trust: TrustStore) -> None:
    mallory = other_ca.issue(ALICE)
    rejected([mallory.cert], trust, "not issued by a trusted CA")
    rejected(pki.proxy(mallory).presented, trust, "not issued by a trusted CA")


def test_same_ca_name_different_key(trust: TrustStore) -> None:
    fake_ca = pki.CA("/DC=org/DC=example/CN=Example Test CA")  # same subject, other key
    rejected([fake_ca.issue(ALICE).cert], trust, "signature does not verify")


def test_self_signed_leaf(trust: TrustStore) -> None:
    rejected([pki.CA("/DC=org/DC=example/O=Test/CN=Alice Smith").cert], trust, "CA certificate")


def test_proxy_with_bad_signature(alice: pki.Credential, trust: TrustStore) -> None:
    p = pki.proxy(alice, signing_key=pki.new_key())
    rejected(p.presented, trust, r"was not signed by .*signature does not verify")


def test_proxy_subject_must_extend_issuer(alice: pki.Credential, trust: TrustStore) -> None:
    other = pki.name("/DC=org/DC=example/O=Test/CN=Carol/CN=12345")
    rejected(pki.proxy(alice, subject_name=other).presented, trust, "is not its issuer's subject")
    two_more = pki.append_cn(pki.append_cn(alice.cert.subject, "1"), "2")
    rejected(pki.proxy(alice, subject_name=two_more).presented, trust, "is not its issuer's subject")
    not_cn = x509.Name(
        [
            *alice.cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]),
        ]
    )
    rejected(pki.proxy(alice, subject_name=not_cn).presented, trust, "plus one CN")


def test_proxy_issuer_name_mismatch(alice: pki.Credential, trust: TrustStore) -> None:
    p = pki.proxy(alice, issuer_name=pki.name("/DC=org/CN=Somebody"))
    rejected(p.presented, trust, "but the next certificate is")


def test_proxy_without_its_signer(alice: pki.Credential, trust: TrustStore) -> None:
    rejected([pki.proxy(alice).cert], trust, "came without the certificate that signed it")


def test_proxy_path_length(alice: pki.Credential, trust: TrustStore) -> None:
    p1 = pki.proxy(alice, path_length=0)
    assert verify_chain(p1.presented, trust).dn == ALICE
    rejected(pki.proxy(p1).presented, trust, "allows 0 proxies below it, the chain has 1")
    p1 = pki.proxy(alice, path_length=1)
    p3 = pki.proxy(pki.proxy(p1))
    rejected(p3.presented, trust, "allows 1 proxies below it, the chain has 2")


def test_malformed_proxy_cert_info(alice: pki.Credential, trust: TrustStore) -> None:
    for raw in [b"\x30\x00", b"\x04\x00", b"\x30\x03\x02\x01\xff", b"\x30\x80", b""]:
        ext = x509.UnrecognizedExtension(pki.PROXY_CERT_INFO_OID, raw)
        p = pki.proxy(alice, style="legacy", cn="12345", extra_extensions=[(ext, True)])
        rejected(p.presented, trust, "malformed proxyCertInfo")


@pytest.mark.parametrize(
    ("path_length", "policy", "policy_bytes"),
    [(None, pki.PPL_INHERIT_ALL, None), (0, pki.PPL_LIMITED, None), (300, "1.2.840.113549.1.1", b"x" * 200)],
)
def test_parse_proxy_cert_info(path_length: int | None, policy: str, policy_bytes: bytes | None) -> None:
    der = pki.proxy_cert_info(path_length, policy, policy_bytes)
    assert parse_proxy_cert_info(der) == (path_length, policy)


def test_proxy_extension_must_be_critical(alice: pki.Credential, trust: TrustStore) -> None:
    rejected(pki.proxy(alice, critical=False).presented, trust, "must be critical")


def test_independent_and_unknown_policies(alice: pki.Credential, trust: TrustStore) -> None:
    rejected(pki.proxy(alice, policy=pki.PPL_INDEPENDENT).presented, trust, "independent proxy")
    rejected(pki.proxy(alice, policy="1.2.3.4").presented, trust, "unsupported policy language 1.2.3.4")


def test_proxy_cannot_be_a_ca(alice: pki.Credential, trust: TrustStore) -> None:
    rejected(pki.proxy(alice, ca_flag=True).presented, trust, "claims to be a CA")


def test_mixed_proxy_styles(alice: pki.Credential, trust: TrustStore) -> None:
    legacy = pki.proxy(alice, style="legacy")
    rejected(pki.proxy(legacy).presented, trust, "mixes RFC 3820 and legacy")


def test_proxy_signed_by_a_ca(ca: pki.CA, trust: TrustStore) -> None:
    as_cred = pki.Credential(ca.cert, ca.key)
    rejected(pki.proxy(as_cred).presented, trust, "signed by a CA certificate")


def test_issuer_without_digital_signature(ca: pki.CA, trust: TrustStore) -> None:
    user = ca.issue(ALICE, digital_signature=False)
    rejected(pki.proxy(user).presented, trust, "no digitalSignature")


def test_user_certificate_issued_by_a_user(alice: pki.Credential, trust: TrustStore) -> None:
    # signed by Alice's key but not a proxy (different subject, no proxyCertInfo)
    fake = pki.CA.__new__(pki.CA)
    fake.cert, fake.key = alice.cert, alice.key
    bob = pki.CA.issue(fake, "/DC=org/DC=example/O=Test/CN=Bob")
    rejected([bob.cert, alice.cert], trust, "is not a CA certificate")


def test_eku_without_client_auth(ca: pki.CA, trust: TrustStore) -> None:
    server_only = ca.issue(ALICE, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    rejected([server_only.cert], trust, "not allowed for TLS client authentication")
    assert verify_chain([ca.issue(ALICE, eku=[]).cert], trust).dn == ALICE  # no EKU at all is fine


def test_ca_path_length(ca: pki.CA) -> None:
    root = pki.CA("/DC=org/DC=example/CN=Strict Root", path_length=0)
    inter = root.intermediate("/DC=org/DC=example/CN=Sub CA")
    user = inter.issue(ALICE)
    rejected(user.presented, TrustStore([root.cert]), "allows 0 intermediate CAs below it")


def test_unknown_critical_extension(ca: pki.CA, alice: pki.Credential, trust: TrustStore) -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
    p = pki.proxy(alice, extra_extensions=[(ext, True)])
    rejected(p.presented, trust, "unknown critical extension 1.2.3.4.5")
    p = pki.proxy(alice, extra_extensions=[(ext, False)])
    assert verify_chain(p.presented, trust).dn == ALICE


def test_proxy_with_subject_alt_name(alice: pki.Credential, trust: TrustStore) -> None:
    san = x509.SubjectAlternativeName([x509.DNSName("example.org")])
    rejected(pki.proxy(alice, extra_extensions=[(san, False)]).presented, trust, "alternative name")


def test_malformed_input(trust: TrustStore) -> None:
    rejected([], trust, "no certificate presented")
    with pytest.raises(AuthError, match="unparsable certificate"):
        verify_chain([b"not a certificate"], trust)
    with pytest.raises(AuthError, match="unparsable"):
        load_certificates([b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"])


def test_chain_too_long(alice: pki.Credential, trust: TrustStore) -> None:
    cred = alice
    for _ in range(4):
        cred = pki.proxy(cred)
    assert verify_chain(cred.presented, trust).dn == ALICE
    rejected(cred.presented, trust, "longer than 3", max_length=3)


# --- DN formatting ---------------------------------------------------------------------------


def test_dn_string_matches_openssl_legacy_oneline(tmp_path: Path) -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fermi National Accelerator Laboratory"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "People"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "José Ünï")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "UID:jose")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jose@example.org")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.USER_ID, "jose")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "x")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "host/a+b.example.org")]),
        ]
    )
    expected = (
        "/DC=org/C=US/OU=People+O=Fermi National Accelerator Laboratory"
        "/CN=Jos\\xC3\\xA9 \\xC3\\x9Cn\\xC3\\xAF/CN=UID:jose/emailAddress=jose@example.org"
        "/UID=jose/1.2.3.4=x/CN=host/a+b.example.org"
    )
    # A multi-valued RDN is a DER SET: its attributes come out sorted by encoding (OU before O).
    cert = pki.CA.issue(_fake_ca(pki.new_key()), subject_name=name)
    assert dn_string(cert.cert.subject) == expected
    # Cross-check with the openssl command line (3.x escapes '/' and '+' in values; 1.x did not).
    pem = tmp_path / "c.pem"
    pem.write_bytes(pki.cert_pem(cert.cert))
    try:
        out = subprocess.run(
            ["openssl", "x509", "-in", str(pem), "-noout", "-subject", "-nameopt", "compat"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl command not available")
    assert out.strip().removeprefix("subject=").replace("\\/", "/").replace("\\+", "+") == expected


def _fake_ca(key: pki.PrivateKey) -> pki.CA:
    fake = pki.CA.__new__(pki.CA)
    fake.key = key
    fake.cert = pki.CA("/DC=org/CN=Throwaway").cert
    fake.parent = None
    return fake


def test_short_name_uid(ca: pki.CA, trust: TrustStore) -> None:
    user = ca.issue("/DC=org/DC=example/O=Test/CN=Alice Smith/CN=UID:asmith")
    assert verify_chain([user.cert], trust).short_name == "asmith"


# --- trust store -----------------------------------------------------------------------------


def test_trust_store_from_directory(
    tmp_path: Path, ca: pki.CA, other_ca: pki.CA, alice: pki.Credential
) -> None:
    inter = ca.intermediate("/DC=org/DC=example/CN=Dir Issuing CA")
    d = pki.write_ca_dir(
        tmp_path / "certificates",
        ca,
        extra_files={
            "bundle.pem": pki.cert_pem(inter.cert, ca.cert),  # duplicates are dropped
            "broken.0": b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
            "other.r0": pki.cert_pem(other_ca.cert),  # CRL-style name: ignored
            "other.namespaces": pki.cert_pem(other_ca.cert),  # ignored
            "README": b"hello",
        },
    )
    (d / "subdir.pem").mkdir()
    store = TrustStore.from_directory(d)
    assert len(store) == 2
    assert store.by_subject(ca.cert.subject) == [ca.cert]
    assert verify_chain([alice.cert], store).dn == ALICE
    rejected([other_ca.issue(ALICE).cert], store, "not issued by a trusted CA")
    assert store.pem().count("BEGIN CERTIFICATE") == 2


def test_trust_store_errors(tmp_path: Path, ca: pki.CA, other_ca: pki.CA) -> None:
    with pytest.raises(ConfigError, match="cannot read CA directory"):
        TrustStore.from_directory(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no CA certificates"):
        TrustStore.from_directory(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot load CA certificates"):
        TrustStore.from_pem_file(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="no CA directory or CA file"):
        TrustStore.load()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.cert_pem(other_ca.cert))
    d = pki.write_ca_dir(tmp_path / "d", ca)
    assert len(TrustStore.load(d, bundle)) == 2
