"""Bearer tokens (WLCG / SciTokens JWTs): keys, signature, issuer, audience, times, scope."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from pathlib import Path

import jwt
import pytest

from rcds.errors import AuthError, ConfigError
from rcds.service.auth.tokens import (
    WLCG_ANY_AUDIENCE,
    TokenVerifier,
    load_issuer_keys,
    parse_bearer,
    scope_grants,
)
from rcds.service.config import ServiceConfig, TokenIssuerConfig

import pki
from pki import AUDIENCE, ISSUER, OTHER_ISSUER


@pytest.fixture
def verifier(tmp_path: Path, rsa_key: pki.TokenKey, ec_key: pki.TokenKey) -> TokenVerifier:
    jwks = pki.write_jwks(tmp_path / "issuer.jwks", rsa_key, ec_key)
    other = pki.TokenKey("ES256")
    pem = tmp_path / "other.pem"
    pem.write_bytes(other.public_pem())
    return TokenVerifier(
        [
            TokenIssuerConfig(ISSUER, (jwks,), (AUDIENCE,), "compute.create"),
            TokenIssuerConfig(OTHER_ISSUER, (pem,), ("https://x.example.org",), "storage.create:/dune"),
        ]
    )


def fails(verifier: TokenVerifier, token: str, match: str, status: int = 401, **kw: object) -> None:
    with pytest.raises(AuthError, match=match) as info:
        verifier.verify(token, **kw)  # type: ignore[arg-type]
    assert info.value.status == status


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_valid_token(verifier: TokenVerifier, rsa_key: pki.TokenKey, ec_key: pki.TokenKey, alg: str) -> None:
    key = rsa_key if alg == "RS256" else ec_key
    ident = verifier.verify(key.sign(pki.claims(ISSUER, groups=["/dune", "/dune/production"])))
    assert ident.kind == "token"
    assert ident.name == f"{ISSUER}#alice-0001"
    assert ident.label == "alice-0001"
    assert ident.groups == ("/dune", "/dune/production")
    assert ident.account is None


def test_verify_header(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    token = rsa_key.sign(pki.claims(ISSUER))
    assert verifier.verify_header(f"Bearer {token}").label == "alice-0001"
    assert verifier.verify_header(f"bearer  {token} ").label == "alice-0001"


def test_key_without_kid_and_pem_keys(tmp_path: Path, rsa_key: pki.TokenKey) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(pki.TokenKey("ES256").public_pem() + rsa_key.public_pem())
    v = TokenVerifier([TokenIssuerConfig(ISSUER, (pem,), (AUDIENCE,))])
    assert v.verify(rsa_key.sign(pki.claims(ISSUER))).label == "alice-0001"
    assert v.verify(rsa_key.sign(pki.claims(ISSUER), kid=False)).label == "alice-0001"


def test_certificate_as_key(tmp_path: Path, ca: pki.CA) -> None:
    cred = ca.issue("/DC=org/CN=issuer", key_type="rsa")
    pem = tmp_path / "issuer-cert.pem"
    pem.write_bytes(pki.cert_pem(cred.cert))
    v = TokenVerifier([TokenIssuerConfig(ISSUER, (pem,), (AUDIENCE,))])
    token = jwt.encode(pki.claims(ISSUER), cred.key, algorithm="RS256")
    assert v.verify(token).label == "alice-0001"


def test_any_audience_and_audience_lists(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    assert verifier.verify(rsa_key.sign(pki.claims(ISSUER, aud=WLCG_ANY_AUDIENCE)))
    assert verifier.verify(rsa_key.sign(pki.claims(ISSUER, aud=["https://else.org", AUDIENCE])))


def test_wrong_audience(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    fails(verifier, rsa_key.sign(pki.claims(ISSUER, aud="https://elsewhere.example.org")), "audience")
    fails(verifier, rsa_key.sign(pki.claims(ISSUER, aud="ANY")), "audience")
    claims = pki.claims(ISSUER)
    del claims["aud"]
    fails(verifier, rsa_key.sign(claims), "aud")


def test_wrong_issuer(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    fails(verifier, rsa_key.sign(pki.claims("https://evil.example.org")), "untrusted token issuer")
    claims = pki.claims(ISSUER)
    del claims["iss"]
    fails(verifier, rsa_key.sign(claims), "no issuer")


def test_signed_by_another_issuers_key(verifier: TokenVerifier, ec_key: pki.TokenKey) -> None:
    # OTHER_ISSUER's tokens must be signed by its own key, not by ISSUER's
    claims = pki.claims(OTHER_ISSUER, aud="https://x.example.org", scope="storage.create:/dune")
    fails(verifier, ec_key.sign(claims, kid=False), "signature does not verify")


def test_unknown_kid(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    fails(verifier, rsa_key.sign(pki.claims(ISSUER), headers={"kid": "nope"}), "no RS256 key with kid 'nope'")


def test_expired_and_not_yet_valid(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    t = pki.now()
    old = rsa_key.sign(pki.claims(ISSUER, issued=t - dt.timedelta(hours=2)))
    fails(verifier, old, "token expired at")
    # within the 60 s leeway it still passes
    assert verifier.verify(old, now=t - dt.timedelta(hours=1) + dt.timedelta(seconds=59))
    fails(verifier, old, "expired", now=(t - dt.timedelta(hours=1)).timestamp() + 61)
    future = rsa_key.sign(pki.claims(ISSUER, issued=t + dt.timedelta(minutes=10)))
    fails(verifier, future, "not valid before")
    assert verifier.verify(future, now=t + dt.timedelta(minutes=10))
    claims = pki.claims(ISSUER, issued=t)
    claims["iat"] = claims["iat"] + 3600
    del claims["nbf"]
    fails(verifier, rsa_key.sign(claims), "issued in the future")


def test_missing_or_bad_exp(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    claims = pki.claims(ISSUER)
    del claims["exp"]
    fails(verifier, rsa_key.sign(claims), "exp")
    claims = pki.claims(ISSUER)
    claims["exp"] = "tomorrow"
    fails(verifier, rsa_key.sign(claims), "exp")


def test_tampered_token(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    token = rsa_key.sign(pki.claims(ISSUER, groups=["/dune"]))
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["wlcg.groups"] = ["/mu2e"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    fails(verifier, f"{header}.{forged}.{sig}", "signature does not verify")
    flipped = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    fails(verifier, f"{header}.{payload}.{flipped}", "signature does not verify")


def test_algorithm_attacks(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    none_token = jwt.encode(pki.claims(ISSUER), None, algorithm="none")
    fails(verifier, none_token, "algorithm 'none' is not accepted")
    hs = jwt.encode(pki.claims(ISSUER), "secret-secret-secret-secret-1234", algorithm="HS256")
    fails(verifier, hs, "algorithm 'HS256' is not accepted")
    # an RS256 token whose header claims ES256: the EC keys do not verify it
    _, payload, sig = rsa_key.sign(pki.claims(ISSUER)).split(".")
    es_header = (
        base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    )
    fails(verifier, f"{es_header}.{payload}.{sig}", "signature|Invalid")
    with pytest.raises(ValueError, match="asymmetric"):
        TokenVerifier([], algorithms=["HS256"])


def test_wrong_scope(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    fails(verifier, rsa_key.sign(pki.claims(ISSUER, scope="storage.read:/")), "does not grant the scope", 403)
    fails(
        verifier,
        rsa_key.sign(pki.claims(ISSUER, scope=None)),
        "does not grant the scope 'compute.create'",
        403,
    )
    fails(verifier, rsa_key.sign(pki.claims(ISSUER, scope="compute.created")), "scope", 403)
    assert verifier.verify(rsa_key.sign(pki.claims(ISSUER, scope="storage.read:/ compute.create")))


def test_path_scopes(tmp_path: Path) -> None:
    key = pki.TokenKey("ES256")
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.public_pem())
    v = TokenVerifier([TokenIssuerConfig(OTHER_ISSUER, (pem,), (AUDIENCE,), "storage.create:/dune")])
    cases = [
        ("storage.create:/", True),
        ("storage.create:/dune", True),
        ("storage.create:/dune/x", False),
        ("storage.create:/dunex", False),
        ("storage.read:/", False),
    ]
    for granted, ok in cases:
        token = key.sign(pki.claims(OTHER_ISSUER, scope=granted))
        if ok:
            assert v.verify(token)
        else:
            fails(v, token, "scope", 403)


@pytest.mark.parametrize(
    ("granted", "required", "ok"),
    [
        ("compute.create", "compute.create", True),
        ("compute.create", "compute.read", False),
        ("storage.create:/", "storage.create:/", True),
        ("storage.create:/", "storage.create:/a/b", True),
        ("storage.create:/a", "storage.create:/a/b", True),
        ("storage.create:/a/", "storage.create:/a/b", True),
        ("storage.create:/a/b", "storage.create:/a", False),
        ("storage.create:/ab", "storage.create:/a", False),
        ("storage.create", "storage.create:/", False),
        ("storage.create:x", "storage.create:/", False),
    ],
)
def test_scope_grants(granted: str, required: str, ok: bool) -> None:
    assert scope_grants(granted, required) is ok


def test_subject_and_groups(verifier: TokenVerifier, rsa_key: pki.TokenKey) -> None:
    fails(verifier, rsa_key.sign(pki.claims(ISSUER, sub="")), "subject|sub")
    claims = pki.claims(ISSUER)
    del claims["sub"]
    fails(verifier, rsa_key.sign(claims), "sub")
    assert verifier.verify(rsa_key.sign(pki.claims(ISSUER, groups=None))).groups == ()
    as_string = pki.claims(ISSUER)
    as_string["wlcg.groups"] = "/dune"
    assert verifier.verify(rsa_key.sign(as_string)).groups == ()
    weird = pki.claims(ISSUER)
    weird["wlcg.groups"] = ["/dune", 3, "", None]
    assert verifier.verify(rsa_key.sign(weird)).groups == ("/dune",)


def test_malformed_tokens(verifier: TokenVerifier) -> None:
    fails(verifier, "abc", "malformed token")
    fails(verifier, "a.b.c", "malformed token")
    fails(verifier, "x" * 20000, "malformed token")


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("Bearer", "malformed"),
        ("", "malformed"),
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme 'Basic'"),
    ],
)
def test_parse_bearer_errors(header: str, match: str) -> None:
    with pytest.raises(AuthError, match=match) as info:
        parse_bearer(header)
    assert info.value.status == 401


def test_key_files(tmp_path: Path, rsa_key: pki.TokenKey, ec_key: pki.TokenKey) -> None:
    keys = load_issuer_keys(
        json.dumps({"keys": [rsa_key.jwk(), ec_key.jwk(), {"kty": "oct", "k": "AAAA"}]}).encode()
    )
    assert [k.kid for k in keys] == [rsa_key.kid, ec_key.kid]
    assert len(load_issuer_keys(json.dumps(ec_key.jwk()).encode())) == 1  # a single JWK
    enc = dict(ec_key.jwk(), use="enc")
    with pytest.raises(ValueError, match="no RSA or EC public key"):
        load_issuer_keys(json.dumps({"keys": [enc]}).encode())
    with pytest.raises(ValueError):
        load_issuer_keys(b"hello")
    with pytest.raises(ValueError):
        load_issuer_keys(b"{not json")
    with pytest.raises(ConfigError, match="cannot load keys of token issuer"):
        TokenVerifier([TokenIssuerConfig(ISSUER, (tmp_path / "missing.jwks",), (AUDIENCE,))])


def test_key_rotation_by_rewriting_the_file(
    tmp_path: Path, rsa_key: pki.TokenKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = pki.write_jwks(tmp_path / "i.jwks", rsa_key)
    v = TokenVerifier([TokenIssuerConfig(ISSUER, (jwks,), (AUDIENCE,))])
    new = pki.TokenKey("ES256")
    fails(v, new.sign(pki.claims(ISSUER)), "no ES256 key")
    pki.write_jwks(jwks, rsa_key, new)
    assert v.verify(new.sign(pki.claims(ISSUER)))
    jwks.write_text("garbage")  # a broken rewrite keeps the previous keys, logged once
    with caplog.at_level(logging.ERROR):
        assert v.verify(new.sign(pki.claims(ISSUER)))
        assert v.verify(new.sign(pki.claims(ISSUER)))
    assert [r.getMessage().count("keeping the previous contents") for r in caplog.records] == [1]


def test_from_config(tmp_path: Path, rsa_key: pki.TokenKey) -> None:
    pki.write_jwks(tmp_path / "i.jwks", rsa_key)
    text = (
        f"[[auth.token_issuers]]\nissuer = '{ISSUER}'\nkeys = 'i.jwks'\n"
        f"audience = '{AUDIENCE}'\nscope = 'rcds.publish'\n"
    )
    cfg = ServiceConfig.loads(text, relative_to=tmp_path)
    v = TokenVerifier.from_config(cfg.auth)
    assert v.issuers == (ISSUER,)
    assert v.verify(rsa_key.sign(pki.claims(ISSUER, scope="rcds.publish")))
    fails(v, rsa_key.sign(pki.claims(ISSUER)), "rcds.publish", 403)
