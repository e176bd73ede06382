"""A wall clock that steps backwards (NTP) never dates a revision before the one it follows.

The real service on a clock that jumps back a day, then an hour, then forward again: every
revision's manifest time, root catalog ``last_modified``, whitelist creation and every CID's stamp
only move forward, revisions keep increasing, a client that has seen the previous revision
accepts each new one, and every repository verifies.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rcds.client.repository import Repository
from rcds.clock import utc
from rcds.format import manifest
from rcds.format.keys import load_public_key_file
from rcds.format.whitelist import parse as parse_whitelist
from rcds.repo.catalog import Catalog
from rcds.repo.source import StoreSource
from rcds.repo.verify import verify_repository
from rcds.service.cleanup import DAY
from rcds.service.repo_reader import open_catalog, published, stamp_times
from rcds.service.runner import ServiceThread
from rcds.storage.local import LocalStore

import servicekit as kit

START = dt.datetime(2031, 6, 1, 12, tzinfo=dt.UTC).timestamp()
NAME = "user1.example.org"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def times(public: Path) -> tuple[int, int, int, dt.datetime]:
    """Revision, manifest T, root catalog last_modified, whitelist creation."""
    m = manifest.parse((public / ".cvmfspublished").read_bytes()).manifest
    rev = published(public)
    assert rev is not None
    with open_catalog(public, rev.root, "", rev.root_size) as cat:
        assert isinstance(cat, Catalog)
        last = cat.last_modified
    wl = parse_whitelist((public / ".cvmfswhitelist").read_bytes()).whitelist
    return m.revision, m.timestamp, last, wl.created


@pytest.mark.timeout(90)
def test_a_clock_stepping_back_keeps_every_time_monotonic(tmp_path: Path) -> None:
    clock = Clock(START)
    cfg = kit.config(
        tmp_path / "srv", repositories=(NAME,), tables="[cleanup]\nmaxdays = 2\nstart_hour = 12\n"
    )
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc, api = st.service, kit.Api(st.url)
        slot = svc.slots[0]
        key = load_public_key_file(slot.s0.layout.key("pub"))
        client = Repository.open_urls(
            [st.repo_url(NAME)], [key], cache_dir=tmp_path / "cache", now=lambda: utc(clock()), ttl_override=0
        )
        seen = [times(slot.public)]
        stamps_seen: dict[str, int] = {}
        published_cids = []

        def step(label: str) -> None:
            data = kit.tarball(seed=label)
            cid = kit.cid_of(data)
            assert api.publish(cid, data).text == "OK\n"
            assert svc.queue.idle(30)
            published_cids.append(cid)
            for c in published_cids:  # use everything again, then write the stamps
                assert api.get("update", c).text.startswith("PRESENT:")
            svc.stamps.flush()
            svc.whitelists.check()
            now = times(slot.public)
            prev = seen[-1]
            assert now[0] > prev[0], label  # a new revision
            assert now[1] >= prev[1] and now[2] >= prev[2] and now[3] >= prev[3], (label, prev, now)
            assert now[2] <= now[1]  # the root catalog is never newer than its manifest
            seen.append(now)
            rev = published(slot.public)
            assert rev is not None
            for c, t in stamp_times(slot.public, rev, cfg.stamp_prefix).items():
                assert t >= stamps_seen.get(c, 0), (label, c)
                stamps_seen[c] = t
            assert client.refresh(force=True) and client.revision == now[0], label  # the client takes it
            verify_repository(StoreSource(LocalStore(slot.public)), NAME, [key], now=utc(clock()))

        step("at the start")
        clock.t -= DAY  # NTP steps the clock back a day
        step("a day back")
        clock.t -= 3600
        step("an hour further back")
        clock.t += 22 * DAY  # far forward: the whitelist is re-signed
        step("three weeks on")
        assert seen[-1][3] == utc(clock.t)
        clock.t -= 2 * DAY  # and back again: the whitelist is not re-dated, nor re-signed
        step("two days back")
        assert seen[-1][3] == seen[-2][3]
        # the cleanup on the stepped-back clock removes nothing used after its "now"
        results = [svc.cleaner.clean(s, clock()) for s in svc.slots]
        assert [r.removed for r in results] == [[]]
        for c in published_cids:
            assert api.get("exists", c).text.startswith("PRESENT:")
        client.close()
        api.close()
