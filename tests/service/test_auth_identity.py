"""Identities, the group Authorizer, and the Authenticator that picks a request's credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcds.errors import AuthError
from rcds.service.auth import (
    ANONYMOUS_LOOPBACK,
    Authenticator,
    Authorizer,
    GridMap,
    Identity,
    TokenVerifier,
    TrustStore,
    is_loopback,
)
from rcds.service.cid import validate_cid
from rcds.service.config import ServiceConfig, TokenIssuerConfig

import pki
from pki import AUDIENCE, ISSUER

ALICE = "/DC=org/DC=example/O=Test/CN=Alice Smith"
alice_x509 = Identity("x509", ALICE, account="dune", label="Alice Smith")
token_user = Identity("token", f"{ISSUER}#u1", groups=("/mu2e", "/dune/production"), label="u1")
nobody = Identity("x509", "/DC=org/CN=Nobody", account=None, label="Nobody")


def denied(authz: Authorizer, ident: Identity, group: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        authz.check(ident, group)
    assert info.value.status == 403
    return info.value


def test_implicit_rule() -> None:
    authz = Authorizer()
    assert authz.may_publish(alice_x509, "dune")
    assert authz.may_publish(alice_x509, validate_cid("dune/" + "a" * 64))
    assert not authz.may_publish(alice_x509, "mu2e")  # another VO's prefix: refused (today: allowed)
    assert authz.may_publish(token_user, "mu2e")
    assert authz.may_publish(token_user, "dune/production")
    assert not authz.may_publish(token_user, "dune")  # /dune/production does not imply dune
    assert not authz.may_publish(nobody, "nobody")
    assert not authz.may_publish(alice_x509, validate_cid("a" * 64))  # one-level CIDs need an ACL "*"
    e = denied(authz, alice_x509, "mu2e")
    assert str(e) == "Alice Smith may not publish under group 'mu2e'; allowed groups: dune"
    assert "no groups are allowed" in str(denied(authz, nobody, "x"))


def test_acl_table() -> None:
    authz = Authorizer(
        {
            "dune": ["mu2e"],  # account "dune" may also publish under mu2e
            "/dune/production": ["dune"],  # token group, written with its slash
            "mu2e": ["gm2"],  # token group, written without it
            ALICE: ["icarus"],  # a full DN
            f"{ISSUER}#u1": ["sbnd"],  # a full token identity
        }
    )
    assert authz.allowed_groups(alice_x509) == {"dune", "mu2e", "icarus"}
    assert authz.allowed_groups(token_user) == {"mu2e", "dune/production", "dune", "gm2", "sbnd"}
    assert Authorizer({}, implicit=False).allowed_groups(alice_x509) == frozenset()


def test_wildcards() -> None:
    admin = Authorizer({"dune": ["*"]})
    assert admin.may_publish(alice_x509, "anything")
    assert admin.may_publish(alice_x509, validate_cid("a" * 64))
    everyone = Authorizer({"*": ["*"]})  # today's behaviour
    assert everyone.may_publish(nobody, "x")
    shared = Authorizer({"*": ["scratch"]})
    assert shared.may_publish(nobody, "scratch") and not shared.may_publish(nobody, "dune")


def test_anonymous_loopback_may_publish_anywhere() -> None:
    assert Authorizer().may_publish(ANONYMOUS_LOOPBACK, "dune")
    assert str(ANONYMOUS_LOOPBACK) == "anonymous:localhost"


def test_principals() -> None:
    assert token_user.principals() == ("mu2e", "dune/production")
    assert alice_x509.acl_keys() == ("dune", ALICE, "*")
    assert Identity("token", "i#s", groups=("/", "/a", "a")).principals() == ("a",)


@pytest.mark.parametrize(
    ("addr", "loop"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False), (None, False), ("localhost", False),
     ("fe80::1%eth0", False)],
)  # fmt: skip
def test_is_loopback(addr: str | None, loop: bool) -> None:
    assert is_loopback(addr) is loop


# --- Authenticator -----------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, ca: pki.CA, trust: TrustStore, rsa_key: pki.TokenKey) -> tuple[Authenticator, Path]:
    gm = tmp_path / "grid-mapfile"
    gm.write_text(f'"{ALICE}" dune\n"/DC=org/DC=example/O=Test/CN=No Account"\n')
    jwks = pki.write_jwks(tmp_path / "i.jwks", rsa_key)
    tokens = TokenVerifier([TokenIssuerConfig(ISSUER, (jwks,), (AUDIENCE,))])
    return Authenticator(tokens=tokens, trust=trust, gridmap=GridMap(gm)), gm


def test_token_wins(setup: tuple[Authenticator, Path], rsa_key: pki.TokenKey, alice: pki.Credential) -> None:
    authn, _ = setup
    ident = authn.authenticate(
        remote_addr="192.0.2.1",
        authorization="Bearer " + rsa_key.sign(pki.claims(ISSUER)),
        cert_chain=alice.presented,
    )
    assert ident.kind == "token" and ident.groups == ("/dune",)
    with pytest.raises(AuthError) as info:
        authn.authenticate(remote_addr="127.0.0.1", authorization="Bearer x.y.z", cert_chain=alice.presented)
    assert info.value.status == 401  # a bad token is not rescued by a good certificate


def test_certificate_and_gridmap(
    setup: tuple[Authenticator, Path], alice: pki.Credential, ca: pki.CA
) -> None:
    authn, gm = setup
    ident = authn.authenticate(remote_addr="192.0.2.1", cert_chain=pki.proxy(alice).presented)
    assert ident == Identity("x509", ALICE, account="dune", label="Alice Smith")
    assert Authorizer().may_publish(ident, "dune")
    no_account = ca.issue("/DC=org/DC=example/O=Test/CN=No Account")
    ident = authn.authenticate(remote_addr="192.0.2.1", cert_chain=no_account.presented)
    assert ident.account is None and not Authorizer().allowed_groups(ident)

    # revoked by removal: Alice disappears from the grid-mapfile -> 403 on the next request
    gm.write_text('"/DC=org/DC=example/O=Test/CN=No Account"\n')
    with pytest.raises(AuthError, match="unrecognized DN /DC=org/DC=example/O=Test/CN=Alice Smith") as info:
        authn.authenticate(remote_addr="192.0.2.1", cert_chain=pki.proxy(alice).presented)
    assert info.value.status == 403


def test_bad_certificate_is_401(setup: tuple[Authenticator, Path], other_ca: pki.CA) -> None:
    authn, _ = setup
    with pytest.raises(AuthError) as info:
        authn.authenticate(remote_addr="127.0.0.1", cert_chain=[other_ca.issue(ALICE).cert])
    assert info.value.status == 401


def test_no_credentials(setup: tuple[Authenticator, Path]) -> None:
    authn, _ = setup
    assert authn.authenticate(remote_addr="127.0.0.1") is ANONYMOUS_LOOPBACK
    assert authn.authenticate(remote_addr="::1", authorization="  ", cert_chain=[]) is ANONYMOUS_LOOPBACK
    for addr in ["192.0.2.1", None]:
        with pytest.raises(AuthError, match="token or client certificate required") as info:
            authn.authenticate(remote_addr=addr)
        assert info.value.status == 401
    authn.require_auth_on_loopback = True
    with pytest.raises(AuthError, match="required"):
        authn.authenticate(remote_addr="127.0.0.1")


def test_disabled_methods(alice: pki.Credential) -> None:
    authn = Authenticator()
    with pytest.raises(AuthError, match="bearer tokens are not accepted"):
        authn.authenticate(remote_addr="127.0.0.1", authorization="Bearer a.b.c")
    with pytest.raises(AuthError, match="client certificates are not accepted"):
        authn.authenticate(remote_addr="127.0.0.1", cert_chain=alice.presented)


def test_certificate_without_gridmap_is_403(trust: TrustStore, alice: pki.Credential) -> None:
    with pytest.raises(AuthError, match="unrecognized DN") as info:
        Authenticator(trust=trust).authenticate(remote_addr="192.0.2.1", cert_chain=alice.presented)
    assert info.value.status == 403


def test_from_config(tmp_path: Path, ca_dir: Path, alice: pki.Credential, rsa_key: pki.TokenKey) -> None:
    (tmp_path / "grid-mapfile").write_text(f'"{ALICE}" alice\n')
    pki.write_jwks(tmp_path / "i.jwks", rsa_key)
    text = f"""
[tls]
cert_file = "host.pem"
key_file = "host.key"
ca_dir = "{ca_dir}"
[auth]
grid_mapfile = "grid-mapfile"
require_auth_on_loopback = true
[[auth.token_issuers]]
issuer = "{ISSUER}"
keys = "i.jwks"
audience = "{AUDIENCE}"
[acl]
alice = ["dune"]
"""
    cfg = ServiceConfig.loads(text, relative_to=tmp_path)
    authn = Authenticator.from_config(cfg)
    authz = Authorizer(cfg.auth.acl)
    ident = authn.authenticate(remote_addr="192.0.2.7", cert_chain=pki.proxy(alice).presented)
    assert ident.account == "alice"
    authz.check(ident, validate_cid("dune/" + "0" * 64))
    assert authz.allowed_groups(ident) == {"alice", "dune"}
    tok = authn.authenticate(
        remote_addr="192.0.2.7", authorization="Bearer " + rsa_key.sign(pki.claims(ISSUER))
    )
    assert authz.may_publish(tok, "dune")  # its /dune group
    with pytest.raises(AuthError) as info:
        authn.authenticate(remote_addr="127.0.0.1")
    assert info.value.status == 401
    assert (
        Authenticator.from_config(ServiceConfig.default(tmp_path)).authenticate(remote_addr="::1").kind
        == "anonymous"
    )
