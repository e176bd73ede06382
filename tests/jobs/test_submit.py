"""publish_code and the pubapi client against a real service on loopback."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from rcds.client.repository import Repository
from rcds.errors import AuthError, ConfigError, InputError, NetworkError
from rcds.jobs.credentials import Credentials
from rcds.jobs.pubapi_client import Attempt, PubapiClient, RetryPolicy, parse_servers
from rcds.jobs.submit import PublishFailedError, prepare, publish_code
from rcds.jobs.wait import ClientAccess
from rcds.service.config import AuthConfig, TlsConfig
from rcds.service.runner import ServiceThread

import jobkit

FAST = RetryPolicy(rounds=3, backoff=0.01, backoff_max=0.05, deadline=20.0)
pytestmark = pytest.mark.timeout(120)


def verbs(attempts: Sequence[Attempt]) -> list[str]:
    """The verbs of a list of attempts."""
    return [a.verb for a in attempts]


def test_publish_directory_then_present(service: ServiceThread, code: Path) -> None:
    out = publish_code(code, "dune", [service.url], retry=FAST, wait=True, wait_timeout=60)
    assert out.uploaded
    assert out.cid.startswith("dune/") and len(out.cid) == 5 + 64
    assert out.repository in service.service.config.repositories
    assert out.path == f"/cvmfs/{out.repository}/sw/{out.cid}"
    assert verbs(out.attempts)[:2] == ["exists", "publish"]
    client = PubapiClient([service.url])
    assert client.exists(out.cid).path == out.path
    st = client.status(out.cid, client.servers[0])
    assert st is not None and st.text == f"PUBLISHED:{out.path}"


def test_same_directory_again_is_not_uploaded(service: ServiceThread, code: Path) -> None:
    first = publish_code(code, "dune", [service.url], retry=FAST, wait=True)
    second = publish_code(code, "dune", [service.url], retry=FAST)
    assert first.uploaded and not second.uploaded
    assert second.cid == first.cid and second.path == first.path
    assert verbs(second.attempts) == ["exists", "update"]  # present: update keeps it alive, no upload


def test_tarball_file_is_published_as_is(service: ServiceThread, tmp_path: Path) -> None:
    tarball = jobkit.make_tarball(tmp_path / "code.tar.gz", "tarball")
    out = publish_code(tarball, "nova", [service.url], retry=FAST, wait=True)
    assert out.cid == "nova/" + hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert out.uploaded and out.path and out.path.endswith(out.cid)
    assert out.size == tarball.stat().st_size
    assert tarball.exists()  # the user's file is not removed


def test_not_a_tarball_is_refused_before_any_request(tmp_path: Path, dead_url: str) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("just text, not a tarball\n" * 20)
    with pytest.raises(InputError, match="not a tarball"):
        publish_code(junk, "dune", [dead_url], retry=FAST)
    with pytest.raises(InputError, match="neither a directory nor a tarball"):
        publish_code(tmp_path / "missing", "dune", [dead_url], retry=FAST)


def test_cid_is_reproducible_across_copies(service: ServiceThread, code: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(code, copy, symlinks=True)
    (copy / "lib" / "data.txt").touch()  # another mtime
    (copy / "lib" / "data.txt").chmod(0o600)  # another mode (normalised to 0644)
    a = prepare(code, workdir=tmp_path)
    b = prepare(copy, workdir=tmp_path)
    try:
        assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    finally:
        a.path.unlink()
        b.path.unlink()
    first = publish_code(code, "dune", [service.url], retry=FAST, wait=True)
    second = publish_code(copy, "dune", [service.url], retry=FAST)
    assert second.cid == first.cid and not second.uploaded
    assert not list(tmp_path.glob("rcds-*.tar.gz"))  # temporary tarballs are removed


def test_failover_to_the_second_server(service: ServiceThread, code: Path, dead_url: str) -> None:
    out = publish_code(code, "dune", [dead_url, service.url], retry=FAST, wait=True)
    live = parse_servers([service.url])[0]
    assert out.server == live and out.path
    dead = parse_servers([dead_url])[0]
    assert out.attempts[0].server == dead and "refused" in out.attempts[0].outcome
    # once a server answered, later calls start with it
    assert all(a.server == live for a in out.attempts[1:])


def test_all_servers_dead_fails_after_bounded_retries(code: Path) -> None:
    dead = [jobkit.dead_url(), jobkit.dead_url()]
    t0 = time.monotonic()
    with pytest.raises(NetworkError) as info:
        publish_code(code, "dune", dead, retry=FAST)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "exists of dune/" in msg and "6 tries" in msg
    for url in parse_servers(dead):
        assert url in msg


def test_total_time_is_bounded_by_the_deadline() -> None:
    sleeps: list[float] = []
    client = PubapiClient(
        [jobkit.dead_url()], policy=RetryPolicy(rounds=1000, backoff=0.05, backoff_max=0.1, deadline=0.6)
    )

    def sleep(s: float) -> None:
        sleeps.append(s)
        time.sleep(s)

    client.sleep = sleep
    t0 = time.monotonic()
    with pytest.raises(NetworkError):
        client.exists("dune/" + "a" * 64)
    assert time.monotonic() - t0 < 3
    assert sleeps[:2] == [0.05, 0.1] and max(sleeps) <= 0.1
    assert len(client.attempts) < 1000


def test_bad_request_is_final_and_shows_the_reason(service: ServiceThread) -> None:
    client = PubapiClient([service.url, service.url + "/"], policy=FAST)
    with pytest.raises(InputError, match=r"\(400\): Bad request: cid may not contain a '\.\.' component"):
        client.exists("../x")
    assert len(client.attempts) == 1  # not retried, no failover


def test_bad_group_is_refused_locally(code: Path, dead_url: str) -> None:
    with pytest.raises(InputError, match=r"group '\.\./x' is not valid"):
        publish_code(code, "../x", [dead_url], retry=FAST)


def test_too_large_is_final(tmp_path: Path, code: Path) -> None:
    st = ServiceThread(jobkit.service_config(tmp_path / "small", max_upload_size=100))
    try:
        with pytest.raises(InputError, match=r"\(413\).*exceeds the maximum of 100 bytes"):
            publish_code(code, "dune", [st.url], retry=FAST)
    finally:
        st.stop()


def test_server_failure_reason_is_reported(service: ServiceThread, tmp_path: Path) -> None:
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(PublishFailedError, match=r"could not publish nova/.*corrupt"):
        publish_code(bad, "nova", [service.url], retry=FAST, wait=True, wait_timeout=30)


def test_token_is_sent_and_401_is_final(service: ServiceThread, tmp_path: Path) -> None:
    token = tmp_path / "bt"
    token.write_text("header.payload.signature\n")
    creds = Credentials.discover(token_file=token, environ={})
    assert creds.token == "header.payload.signature"
    client = PubapiClient([service.url], creds, FAST)
    with pytest.raises(AuthError, match=r"\(401\): bearer tokens are not accepted here"):
        client.exists("dune/" + "b" * 64)
    assert len(client.attempts) == 1


def test_credentials_from_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "tok"
    token.write_text("  abc.def  \n")
    proxy = tmp_path / "x509up_u1000"
    proxy.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Credentials.discover(environ={"BEARER_TOKEN": "xyz"}).token == "xyz"
    env = {"BEARER_TOKEN_FILE": str(token), "X509_USER_PROXY": str(proxy)}
    creds = Credentials.discover(environ=env)
    assert creds.token == "abc.def" and creds.cert_file == proxy and creds.key_file is None
    assert Credentials.discover(environ={}) == Credentials()
    with pytest.raises(ConfigError, match="does not exist"):
        Credentials.discover(cert_file=tmp_path / "nope.pem", environ={})
    with pytest.raises(ConfigError, match="one bearer token"):
        empty = tmp_path / "empty"
        empty.write_text("\n")
        Credentials.discover(token_file=empty, environ={})


def test_parse_servers() -> None:
    assert parse_servers(["rcds01.fnal.gov rcds02.fnal.gov"]) == [
        "https://rcds01.fnal.gov/pubapi",
        "https://rcds02.fnal.gov/pubapi",
    ]
    assert parse_servers(["http://h:8080/pubapi/,http://h:8080", "https://x/"]) == [
        "http://h:8080/pubapi",
        "https://x/pubapi",
    ]
    with pytest.raises(ConfigError, match="only http"):
        parse_servers(["ftp://x"])
    with pytest.raises(ConfigError, match="no publishing server"):
        parse_servers([" , "])


def test_wait_until_the_client_library_sees_it(
    service: ServiceThread, code: Path, access: ClientAccess, tmp_path: Path
) -> None:
    out = publish_code(code, "dune", [service.url], retry=FAST, client_check=access, wait_timeout=60)
    assert out.path and out.repository
    keys = [d / f"{out.repository}.pub" for d in access.keys if (d / f"{out.repository}.pub").exists()]
    url = access.urls[0].replace("@fqrn@", out.repository)
    with Repository.open_urls([url], keys, cache_dir=tmp_path / "c2") as repo:
        inner = out.path.split(out.repository, 1)[1]
        assert repo.read_bytes(inner + "/bin/run.sh").startswith(b"#!/bin/sh")
        assert repo.readlink(inner + "/latest") == "lib"


def test_https_with_client_certificate_and_ca(tmp_path: Path, code: Path) -> None:
    pki = jobkit.load_pki()
    ca = pki.CA("/DC=org/DC=example/CN=Jobs Test CA")
    host = ca.issue("/DC=org/DC=example/CN=localhost", server=True, sans=["127.0.0.1", "localhost"])
    user = ca.issue("/DC=org/DC=example/O=Test/CN=Dune User")
    host_cert, host_key = host.write(tmp_path / "pki", "host")
    user_cert, user_key = user.write(tmp_path / "pki", "user")
    ca_file = tmp_path / "pki" / "ca.pem"
    ca_file.write_bytes(pki.cert_pem(ca.cert))
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text('"/DC=org/DC=example/O=Test/CN=Dune User" dune\n')
    cfg = jobkit.service_config(
        tmp_path / "svc",
        tls=TlsConfig(host_cert, host_key, ca_file=ca_file),
        auth=AuthConfig(grid_mapfile=gridmap, require_auth_on_loopback=True),
    )
    st = ServiceThread(cfg)
    try:
        assert st.url.startswith("https://")
        creds = Credentials.discover(cert_file=user_cert, key_file=user_key, ca_file=ca_file, environ={})
        out = publish_code(code, "dune", [st.url], credentials=creds, retry=FAST, wait=True)
        assert out.uploaded and out.path
        proxy = tmp_path / "pki" / "x509up_u1000"  # certificate and key in one file, as a proxy
        proxy.write_bytes(user_cert.read_bytes() + user_key.read_bytes())
        from_env = Credentials.discover(ca_file=ca_file, environ={"X509_USER_PROXY": str(proxy)})
        again = publish_code(code, "dune", [st.url], credentials=from_env, retry=FAST)
        assert again.cid == out.cid and not again.uploaded
        with pytest.raises(AuthError, match=r"refused publish \(403\).*may not publish under group 'nova'"):
            publish_code(code, "nova", [st.url], credentials=creds, retry=FAST)
        anonymous = Credentials(ca_file=ca_file)
        with pytest.raises(AuthError, match=r"\(40[13]\)"):
            publish_code(code, "dune", [st.url], credentials=anonymous, retry=FAST)
        with pytest.raises(NetworkError, match=r"(?i)certificate verify failed"):
            publish_code(code, "dune", [st.url], credentials=Credentials(), retry=FAST)
    finally:
        st.stop()
