"""The service keeps its whitelists valid on its own clock, and shouts when it cannot.

A real service (API, repositories, repository server) on an injected clock: a third of the
validity before expiry the whitelist is re-signed; without the master key the status, metrics and
log say so from that day on, until a whitelist signed elsewhere is installed.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import pytest

from rcds.clock import utc
from rcds.format import keys
from rcds.format.hashes import Algorithm
from rcds.format.whitelist import parse
from rcds.publish.whitelist_sign import sign_offline
from rcds.repo.whitelist_age import WhitelistState, assess_tree
from rcds.service.cleanup import DAY
from rcds.service.core import init_repositories
from rcds.service.runner import ServiceThread

import servicekit as kit

START = dt.datetime(2031, 3, 1, 12, tzinfo=dt.UTC).timestamp()  # far from the real date on purpose
JSON = {"Accept": "application/json"}


class Clock:
    """A settable wall clock."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def created(public: Path) -> dt.datetime:
    return parse((public / ".cvmfswhitelist").read_bytes()).whitelist.created


@pytest.mark.timeout(60)
def test_resigned_a_third_before_expiry(tmp_path: Path) -> None:
    clock = Clock(START)
    cfg = kit.config(tmp_path / "srv", repositories=("user1.example.org",))
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc, api = st.service, kit.Api(st.url)
        public = svc.slots[0].public
        assert created(public) == utc(START)  # made on the service's clock, not the real one
        clock.t += 19 * DAY  # 11 days left: not yet
        svc.housekeeping()
        assert created(public) == utc(START)
        clock.t += 2 * DAY  # 9 days left: re-signed
        svc.housekeeping()
        assert created(public) == utc(clock.t)
        health = api.get("status", headers=JSON).json()
        assert health["status"] == "OK" and health["problems"] == []
        (entry,) = health["whitelists"]
        assert entry["state"] == "ok" and entry["days_left"] == 30 and entry["resigns"] == 1
        assert api.get("status").text == "OK\n"
        metrics = api.page("/metrics").text
        assert 'rcds_whitelist_resigns_total{repository="user1.example.org",role="own"} 1.0' in metrics
        assert 'rcds_whitelist_needs_resign{repository="user1.example.org",role="own"} 0.0' in metrics
        assert "rcds_problems 0.0" in metrics
        api.close()


@pytest.mark.timeout(60)
def test_without_the_master_key_it_says_so_days_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(START)
    name = "user1.example.org"
    cfg = kit.config(tmp_path / "srv", repositories=(name,))
    init_repositories(cfg, clock)
    layout_keys = cfg.state_dir / name / "keys"
    vault = tmp_path / "vault"
    vault.mkdir()
    shutil.move(layout_keys / f"{name}.masterkey", vault / "master.key")  # kept off the server
    with (
        caplog.at_level(logging.INFO, "rcds.service"),
        ServiceThread(cfg, clock=clock, background=False) as st,
    ):
        assert "no master key for user1.example.org" in caplog.text  # said at start already
        svc, api = st.service, kit.Api(st.url)
        public = svc.slots[0].public
        clock.t += 21 * DAY
        caplog.clear()
        for _ in range(3):  # three checks within the hour: one error line
            svc.housekeeping()
            clock.t += 60
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "CANNOT RE-SIGN" in errors[0].getMessage()
        assert "expires in 9 days" in errors[0].getMessage()
        text = api.get("status").text
        assert text.startswith(f"WARNING: the whitelist of {name} expires in 8 days")
        assert "master key" in text
        health = api.get("status", headers=JSON).json()
        assert health["status"] == "WARNING"
        assert health["whitelists"][0]["state"] == "renew" and health["whitelists"][0]["resign_failures"] == 3
        metrics = api.page("/metrics").text
        assert f'rcds_whitelist_resign_failures_total{{repository="{name}",role="own"}} 3.0' in metrics
        assert f'rcds_whitelist_needs_resign{{repository="{name}",role="own"}} 1.0' in metrics
        assert "rcds_problems 1.0" in metrics
        clock.t += 2 * 3600  # an hour later: said again
        svc.housekeeping()
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2

        # signed on the machine holding the key, installed on the server: all well again
        data = sign_offline(
            name,
            keys.load_private_key((vault / "master.key").read_bytes()),
            keys.load_certificate((layout_keys / f"{name}.crt").read_bytes()),
            Algorithm.SHA1,
            30,
            utc(clock.t),
        )
        svc.slots[0].s0.install_whitelist(data, now=clock.t)
        svc.housekeeping()
        assert api.get("status").text == "OK\n"
        assert assess_tree(name, public, utc(clock.t)).state is WhitelistState.OK
        api.close()
