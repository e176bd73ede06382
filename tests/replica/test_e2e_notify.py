"""Publishing service → ``rcds replica run`` → real Squid → client: a new CID arrives by notifications alone.

Real parts on loopback: the service (its embedded broker announces every new revision), a stratum 1
process subscribed to it (pull interval 300 s, serving its own broker, manifest ``max-age=61``),
Squid from the sample site configuration, and a client reading through Squid with a one-hour TTL
that follows the stratum 1's broker. Neither the replica's interval, nor Squid's copy of the
manifest, nor the client's TTL can bring the new tree within the bound: only the chain of
notifications can. (The figures of this path are measured by ``bench/e2e.py``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest
import urllib3

from rcds.client.fetch.notifications import NotificationFollower
from rcds.client.repository import Repository
from rcds.service.config import ListenConfig, ServeConfig, ServiceConfig
from rcds.service.runner import ServiceThread
from rcds.testing.squid import SQUID, Squid

from replkit import replica_config, replica_run

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(SQUID is None, reason="squid is not installed (apt-get install squid)"),
]

FQRN = "user1.example.org"
SITE_CONF = Path(__file__).resolve().parents[2] / "examples" / "squid" / "site-squid.conf"
BOUND = 20.0  # seconds; the fallbacks would take 61 s (Squid) to 3600 s (client TTL)


def tarball(text: bytes) -> tuple[bytes, str]:
    """A tar.gz with ``bin/hello.txt`` = ``text``, and its CID."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("bin/hello.txt")
        ti.size = len(text)
        tf.addfile(ti, io.BytesIO(text))
    body = buf.getvalue()
    return body, "dune/" + hashlib.sha256(body).hexdigest()


def test_a_published_cid_reaches_a_client_behind_squid_through_notifications_alone(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        ServiceConfig.default(tmp_path / "svc"),
        repositories=(FQRN,),
        listen=ListenConfig("127.0.0.1", 0),
        serve=ServeConfig("127.0.0.1", 0),
    )
    with ServiceThread(cfg) as st, Squid.from_file(SITE_CONF) as squid:
        key = cfg.state_dir / FQRN / "keys" / f"{FQRN}.pub"
        conf = replica_config(
            tmp_path / "replica.toml",
            FQRN,
            st.repo_url(FQRN),
            key,
            sections="[serve]\nport = 0\nroot_max_age = 61\n\n"
            f"[notify]\nsubscribe = ['{st.url}']\nbroker_port = 0\n\n",
        )
        with replica_run(conf) as lines:
            m = lines.wait_for(r"serving at (\S+)/cvmfs/; notifications at (\S+)/notifications/")
            s1_url, s1_broker = f"{m.group(1)}/cvmfs/{FQRN}", m.group(2)
            lines.wait_for(rf"{FQRN}: revision \d+")  # the first pull, at start
            repo = Repository.open_urls(
                [s1_url],
                [key],
                proxies=squid.url,
                cache_dir=tmp_path / "cache",
                probe=False,
                ttl_override=3600,
            )
            follower = NotificationFollower(repo, s1_broker)
            follower.subscription.backoff = (0.05, 0.2)
            with follower:
                assert follower.subscription.connected.wait(10)
                # the replica's own subscription to the service is up too (else it misses the news)
                broker = st.service.broker
                assert broker is not None
                deadline = time.monotonic() + 10
                while broker.subscribers(FQRN) < 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert broker.subscribers(FQRN) >= 1
                before = repo.revision
                body, cid = tarball(b"hello from the worker node\n")
                t0 = time.monotonic()
                r = urllib3.request("POST", f"{st.url}/pubapi/publish?cid={cid}", body=body, retries=False)
                assert r.status == 200, r.data
                path = f"/sw/{cid}/bin/hello.txt"
                seen = follower.wait_for(lambda: repo.exists(path), BOUND)
                took = time.monotonic() - t0
                assert seen, f"{cid} not visible after {took:.1f} s (revision {repo.revision}, was {before})"
                assert repo.read_bytes(path) == b"hello from the worker node\n"
                assert repo.revision > before and follower.switched >= 1
            repo.close()
        # the new catalog and the file came through Squid, not around it
        assert squid.wait_logged(f"/cvmfs/{FQRN}/data/"), squid.log_lines()[-10:]
