"""Authentication and group authorisation through the API over real TLS on loopback.

X.509 certificates and RFC 3820 proxies (DN looked up in the grid-mapfile), bearer tokens; ping
and config open to all; expired, revoked-by-removal, wrong-CA, wrong-scope, wrong-audience and
other groups' prefixes refused, with nothing published or spooled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import urllib3

from rcds.service.runner import ServiceThread

import pki
import servicekit as kit

REPOS = ("user1.example.org", "user2.example.org")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, ca: pki.CA) -> kit.Pki:
    return kit.Pki.create(tmp_path_factory.mktemp("pki"), ca)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, tls: kit.Pki) -> Iterator[ServiceThread]:
    cfg = kit.config(tmp_path_factory.mktemp("auth"), repositories=REPOS, tables=tls.tls_tables())
    with ServiceThread(cfg) as st:
        assert st.url.startswith("https://127.0.0.1:")
        yield st


def client(svc: ServiceThread, tls: kit.Pki, cred: pki.Credential | None = None, **kw: object) -> kit.Api:
    return kit.Api(svc.url, ssl_context=tls.context(cred, stem=str(id(cred))), **kw)  # type: ignore[arg-type]


def nothing_happened(svc: ServiceThread, before: dict[str, int]) -> bool:
    return {s.name: s.s0.manifest().revision for s in svc.service.slots} == before and kit.spool_files(
        svc.service.config.spool_dir
    ) == []


@pytest.mark.timeout(30)
def test_ping_and_config_are_open_to_all(svc: ServiceThread, tls: kit.Pki) -> None:
    api = client(svc, tls)
    assert api.get("ping").text == "OK\n"
    assert api.get("config").text == "repos:user1.example.org,user2.example.org\n"
    r = api.get("exists", "dune/x")
    assert r.status == 401 and r.text == "token or client certificate required\n"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="rcds"'
    assert api.publish("dune/x", b"x").status == 401
    assert api.get("status", "dune/x").status == 401
    api.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_certificate_and_proxies_publish(svc: ServiceThread, tls: kit.Pki, layers: int) -> None:
    cred = tls.alice
    for _ in range(layers):
        cred = pki.proxy(cred)
    api = client(svc, tls, cred)
    data = kit.tarball(seed=f"x509-{layers}")
    cid = kit.cid_of(data, "dune")
    assert api.get("exists", cid).text == "MISSING\n"
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    assert api.get("update", cid).text.startswith("PRESENT:")
    api.close()


@pytest.mark.timeout(60)
def test_other_groups_prefix_is_403(svc: ServiceThread, tls: kit.Pki) -> None:
    alice = client(svc, tls, pki.proxy(tls.alice))
    bob = client(svc, tls, tls.bob)
    data = kit.tarball(seed="mu2e code")
    mu2e_cid = kit.cid_of(data, "mu2e")
    before = kit.revisions(svc)
    r = alice.publish(mu2e_cid, data)
    assert r.status == 403
    assert r.text == "Alice Smith may not publish under group 'mu2e'; allowed groups: dune\n"
    assert alice.publish("Alice", kit.tarball()).status == 403  # a one-level CID is its own group
    assert nothing_happened(svc, before)
    assert bob.publish(mu2e_cid, data).text == "OK\n"
    assert bob.wait_status(mu2e_cid).text.startswith("PUBLISHED:")
    # anyone may ask whether it exists; only the group may stamp it
    assert alice.get("exists", mu2e_cid).text.startswith("PRESENT:")
    assert alice.get("update", mu2e_cid).status == 403
    j = alice.get("update", mu2e_cid, headers={"Accept": "application/json"})
    assert j.status == 403 and j.json()["error"].startswith("Alice Smith may not publish")
    alice.close()
    bob.close()


@pytest.mark.timeout(60)
def test_unknown_and_revoked_dns_are_403(svc: ServiceThread, tls: kit.Pki) -> None:
    carol = client(svc, tls, tls.ca.issue("/DC=org/DC=example/O=Test/CN=Carol"))
    r = carol.get("exists", "dune/x")
    assert (r.status, r.text) == (403, "unrecognized DN /DC=org/DC=example/O=Test/CN=Carol\n")
    dave_cred = tls.ca.issue("/DC=org/DC=example/O=Test/CN=Dave")
    original = tls.gridmap.read_text()
    tls.gridmap.write_text(original + '"/DC=org/DC=example/O=Test/CN=Dave" dune\n')
    try:
        dave = client(svc, tls, pki.proxy(dave_cred))
        assert dave.get("exists", "dune/x").text == "MISSING\n"
        tls.gridmap.write_text(original)  # revoked by removal, no restart
        r = dave.get("exists", "dune/x")
        assert r.status == 403 and "unrecognized DN" in r.text
        before = kit.revisions(svc)
        assert dave.publish("dune/revoked", kit.tarball(seed="revoked")).status == 403
        assert nothing_happened(svc, before)
        dave.close()
    finally:
        tls.gridmap.write_text(original)
    carol.close()


def _refused_at_handshake(api: kit.Api) -> bool:
    try:
        api.get("exists", "dune/x")
    except urllib3.exceptions.HTTPError:
        return True
    return False


@pytest.mark.timeout(60)
def test_bad_certificates_fail_the_handshake(svc: ServiceThread, tls: kit.Pki, other_ca: pki.CA) -> None:
    past = pki.now() - dt.timedelta(days=2)
    expired_user = tls.ca.issue(kit.ALICE_DN, not_before=past, not_after=past + dt.timedelta(days=1))
    bad = {
        "wrong CA": other_ca.issue(kit.ALICE_DN),
        "expired certificate": expired_user,
        "expired proxy": pki.proxy(tls.alice, not_before=past, not_after=past + dt.timedelta(hours=1)),
        "proxy signed by another key": pki.proxy(tls.alice, signing_key=pki.new_key()),
    }
    before = kit.revisions(svc)
    for what, cred in bad.items():
        api = client(svc, tls, cred)
        assert _refused_at_handshake(api), what
        api.close()
    # the server goes on serving good clients
    good = client(svc, tls, pki.proxy(tls.alice))
    assert good.get("exists", "dune/x").text == "MISSING\n"
    good.close()
    assert nothing_happened(svc, before)


@pytest.mark.timeout(60)
def test_application_refuses_what_openssl_allows(svc: ServiceThread, tls: kit.Pki) -> None:
    api = client(svc, tls, pki.proxy(tls.alice, policy=pki.PPL_INDEPENDENT))
    r = api.get("exists", "dune/x")
    assert r.status == 401 and "independent proxy" in r.text and r.text.count("\n") == 1
    api.close()


@pytest.mark.timeout(60)
def test_tokens(svc: ServiceThread, tls: kit.Pki) -> None:
    data = kit.tarball(seed="token")
    cid = kit.cid_of(data, "dune")
    api = client(svc, tls, token=tls.token(groups=["/dune"]))
    assert api.publish(cid, data).text == "OK\n"
    assert api.wait_status(cid).text.startswith("PUBLISHED:")
    api.close()

    before = kit.revisions(svc)
    other = kit.tarball(seed="token other")
    refused = {
        "wrong group": (tls.token(groups=["/mu2e"]), 403, "may not publish under group 'dune'"),
        "wrong scope": (tls.token(scope="storage.read:/"), 403, "compute.create"),
        "wrong audience": (tls.token(aud="https://elsewhere.example.org"), 401, "audience"),
        "expired": (
            tls.token(issued=pki.now() - dt.timedelta(hours=3), lifetime=dt.timedelta(hours=1)),
            401,
            "expired",
        ),
        "unknown issuer": (pki.TokenKey("ES256").sign(pki.claims(pki.OTHER_ISSUER)), 401, "issuer"),
        "unknown key": (pki.TokenKey("ES256").sign(pki.claims(pki.ISSUER)), 401, "no ES256 key"),
        "forged signature": (
            pki.TokenKey("ES256", kid=tls.token_key.kid).sign(pki.claims(pki.ISSUER)),
            401,
            "signature",
        ),
    }
    for what, (token, status, reason) in refused.items():
        api = client(svc, tls, token=token)
        r = api.publish(kit.cid_of(other, "dune"), other)
        assert r.status == status, (what, r.text)
        assert reason in r.text and r.text.count("\n") == 1, (what, r.text)
        api.close()
    api = client(svc, tls)
    for header in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer a.b.c"):
        r = api.get("exists", "dune/x", headers={"Authorization": header})
        assert r.status in (401, 403) and r.text.count("\n") == 1, (header, r.text)
    api.close()
    assert nothing_happened(svc, before)


@pytest.mark.timeout(60)
def test_loopback_without_credentials_is_a_setting(
    tmp_path_factory: pytest.TempPathFactory, tls: kit.Pki
) -> None:
    cfg = kit.config(tmp_path_factory.mktemp("open"), tables=tls.tls_tables(require_auth_on_loopback=False))
    with ServiceThread(cfg) as st:
        api = kit.Api(st.url, ssl_context=tls.context())
        data = kit.tarball(seed="anonymous loopback")
        cid = kit.cid_of(data, "anygroup")
        assert api.publish(cid, data).text == "OK\n"  # localhost may publish anywhere, as today
        assert api.wait_status(cid).text.startswith("PUBLISHED:")
        api.close()
