"""Cleanup over simulated days with publishes and updates interleaved (the clock is injected).

Nothing used within the window is removed, everything older is, one repository per hour from the
configured hour, each followed by gc; stamps count in any repository, also the partner's; CIDs
queued or being published are never removed; every repository verifies afterwards.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.format.keys import load_public_key_file
from rcds.repo.source import StoreSource
from rcds.repo.verify import verify_repository
from rcds.service.cleanup import DAY, CleanResult
from rcds.service.config import ServiceConfig
from rcds.service.runner import ServiceThread
from rcds.storage.local import LocalStore
from rcds.testing.processes import free_port

import servicekit as kit

HOUR = 3600
MAXDAYS = 4
START_HOUR = 12  # noon: no daylight-saving jump skips or repeats it


class Clock:
    """A settable clock (whole seconds)."""

    def __init__(self, t: float) -> None:
        self.t = float(int(t))

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def midnight_today() -> float:
    """Local midnight of today (the simulation starts there; whitelists stay valid for 30 days)."""
    return dt.datetime.combine(dt.date.today(), dt.time()).timestamp()


def verify_all(st: ServiceThread) -> None:
    for slot in st.service.slots:
        key = load_public_key_file(slot.s0.layout.key("pub"))
        report = verify_repository(StoreSource(LocalStore(slot.public)), slot.name, [key])
        assert report.revision == slot.s0.manifest().revision


def tables(maxdays: int = MAXDAYS) -> str:
    return f"[cleanup]\nmaxdays = {maxdays}\nstart_hour = {START_HOUR}\n"


@pytest.fixture
def clock() -> Clock:
    return Clock(midnight_today())


@pytest.mark.timeout(180)
def test_simulated_days(tmp_path: Path, clock: Clock) -> None:
    repos = ("user1.example.org", "user2.example.org")
    cfg = kit.config(tmp_path / "srv", repositories=repos, tables=tables())
    rng = random.Random(20240601)
    last: dict[str, float] = {}  # CID -> last publish or update
    repo_of: dict[str, str] = {}
    payload: dict[str, bytes] = {}
    removed_total: list[str] = []
    window = MAXDAYS * DAY
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc = st.service
        api = kit.Api(st.url)

        def publish(cid: str) -> None:
            assert api.publish(cid, payload[cid]).text == "OK\n"
            assert svc.queue.idle(30)
            status = api.get("status", cid, headers={"Accept": "application/json"}).json()
            assert status["state"] == "published", status
            repo_of[cid] = status["repository"]
            last[cid] = clock()

        def check_cleanup(result: CleanResult, now: float) -> None:
            mine = [c for c, r in repo_of.items() if r == result.repository]
            expired = {c for c in mine if last[c] < now - window}
            assert set(result.removed) == expired, (now, result)
            for c in mine:
                expected = "MISSING\n" if c in expired else f"PRESENT:/cvmfs/{result.repository}/sw/{c}\n"
                assert api.get("exists", c).text == expected
            for c in expired:
                del repo_of[c]
            removed_total.extend(expired)

        cleaned_slots: list[tuple[int, str]] = []
        for day in range(4 * MAXDAYS):
            for hour in range(24):
                now = clock()
                for result in svc.cleaner.tick(now):
                    cleaned_slots.append((day, result.repository))
                    assert dt.datetime.fromtimestamp(now).hour == START_HOUR + repos.index(result.repository)
                    check_cleanup(result, now)
                    if result.removed:
                        assert result.objects_deleted > 0 and result.bytes_freed > 0  # gc followed
                if hour in (9, 15) and day < 3 * MAXDAYS:  # publish something new
                    data = kit.tarball({"lib/x.so": rng.randbytes(20_000)}, seed=f"{day}-{hour}")
                    cid = kit.cid_of(data)
                    payload[cid] = data
                    publish(cid)
                if hour in (11, 17, 20):  # use some CIDs again: update, re-publishing the expired ones
                    for cid in rng.sample(sorted(payload), min(2, len(payload))):
                        if cid in repo_of:
                            assert api.get("update", cid).text.startswith("PRESENT:")
                            last[cid] = clock()
                        elif day < 3 * MAXDAYS:
                            assert api.get("update", cid).text == "MISSING\n"
                            publish(cid)
                if hour % 6 == 0:
                    svc.stamps.flush()
                clock.advance(HOUR)
        # each repository was cleaned once a day, at its own hour
        assert len(cleaned_slots) == 2 * 4 * MAXDAYS
        assert len(set(cleaned_slots)) == len(cleaned_slots)
        assert removed_total, "the simulation removed nothing"
        # at the end: what was removed was unused for the window, the rest is there
        for cid in payload:
            present = api.get("exists", cid).text.startswith("PRESENT:")
            assert present == (cid in repo_of)
            if not present:
                assert last[cid] < clock() - window
        api.close()
        verify_all(st)


@pytest.mark.timeout(60)
def test_queued_and_publishing_cids_are_kept(tmp_path: Path, clock: Clock) -> None:
    cfg = kit.config(tmp_path / "srv", tables=tables(1))
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc = st.service
        api = kit.Api(st.url)
        cids = []
        for i in range(3):
            data = kit.tarball(seed=f"old-{i}")
            cids.append(kit.cid_of(data))
            api.publish(cids[-1], data)
        assert svc.queue.idle(30)
        svc.stamps.flush()
        clock.advance(10 * DAY)
        expired = {c for v in svc.cleaner.expired(clock()).values() for c in v}
        assert expired == set(cids)
        # an upload of the CID arriving (e.g. a requeued spool file) makes it active: kept
        assert svc.status.claim(cids[0])
        expired = {c for v in svc.cleaner.expired(clock()).values() for c in v}
        assert expired == set(cids[1:])
        results = [svc.cleaner.clean(s, clock()) for s in svc.slots]
        assert sorted(c for r in results for c in r.removed) == sorted(cids[1:])
        assert api.get("exists", cids[0]).text.startswith("PRESENT:")
        svc.status.release(cids[0])
        api.close()
        verify_all(st)


@pytest.mark.timeout(60)
def test_publishing_continues_in_other_repositories_during_cleanup(tmp_path: Path, clock: Clock) -> None:
    cfg = kit.config(tmp_path / "srv", tables=tables())
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc = st.service
        api = kit.Api(st.url)
        first, second = svc.slots
        in_gc, release = threading.Event(), threading.Event()
        real_gc = first.s0.gc

        def slow_gc(keep_revisions: int = 1) -> object:
            in_gc.set()
            assert release.wait(30)
            return real_gc(keep_revisions)

        first.s0.gc = slow_gc  # type: ignore[method-assign]
        cleaner = threading.Thread(target=svc.cleaner.clean, args=(first, clock()))
        cleaner.start()
        try:
            assert in_gc.wait(30)
            assert first.cleaning
            for i in range(3):
                data = kit.tarball(seed=f"during cleanup {i}")
                api.publish_and_wait(data, second.name)
        finally:
            release.set()
            cleaner.join(30)
        assert not first.cleaning
        data = kit.tarball(seed="after cleanup")  # the cleaned repository takes work again
        svc.slots[1].cleaning = True
        api.publish_and_wait(data, first.name)
        svc.slots[1].cleaning = False
        api.close()


@pytest.fixture
def pair(tmp_path: Path, clock: Clock) -> Iterator[tuple[ServiceThread, ServiceThread]]:
    """Servers A (user1) and B (user3) replicating each other, on one simulated clock."""
    ports = {k: free_port() for k in ("a_api", "a_repo", "b_api", "b_repo")}
    keys = {"a": tmp_path / "a-keys", "b": tmp_path / "b-keys"}

    def cfg(me: str, other: str, repo: str) -> ServiceConfig:
        return kit.config(
            tmp_path / me,
            repositories=(repo,),
            listen_port=ports[f"{me}_api"],
            serve_port=ports[f"{me}_repo"],
            tables=tables() + f'[replica]\npartner_url = "http://127.0.0.1:{ports[f"{other}_api"]}"\n'
            f'partner_repository_url = "http://127.0.0.1:{ports[f"{other}_repo"]}/cvmfs/@fqrn@"\n'
            f'partner_keys_dir = "{keys[me]}"\n',
        )

    a = ServiceThread(cfg("a", "b", "user1.example.org"), clock=clock, background=False)
    b = ServiceThread(cfg("b", "a", "user3.example.org"), clock=clock, background=False)
    for me, other in ((keys["a"], b), (keys["b"], a)):
        me.mkdir()
        for slot in other.service.slots:
            shutil.copy(slot.s0.layout.key("pub"), me / f"{slot.name}.pub")
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.mark.timeout(120)
def test_stamps_in_the_partners_repository_count(
    pair: tuple[ServiceThread, ServiceThread], clock: Clock
) -> None:
    a, b = pair
    api_a, api_b = kit.Api(a.url), kit.Api(b.url)
    used, unused = kit.tarball(seed="used through A"), kit.tarball(seed="never used again")
    for data in (used, unused):
        api_b.publish_and_wait(data, "user3.example.org")
    b.service.stamps.flush()
    a.service.partner.pull()
    assert (
        api_a.get("exists", kit.cid_of(used)).text
        == f"PRESENT:/cvmfs/user3.example.org/sw/{kit.cid_of(used)}\n"
    )
    assert api_a.get("config").text == "repos:user1.example.org,user3.example.org\n"

    def day(update: bool) -> list[str]:
        """One simulated day: maybe use the CID through A, replicate both ways, clean B at its hour."""
        removed: list[str] = []
        for hour in range(24):
            if hour == 10 and update:
                assert api_a.get("update", kit.cid_of(used)).text.startswith("PRESENT:")
                a.service.stamps.flush()  # the stamp goes into A's own repository
            if hour == 11:
                a.service.partner.pull()
                b.service.partner.pull()
            for r in b.service.cleaner.tick(clock()) + a.service.cleaner.tick(clock()):
                removed += r.removed
            clock.advance(HOUR)
        return removed

    for _ in range(2 * MAXDAYS):  # well past the window: only A's stamps keep the CID alive on B
        removed = day(update=True)
        assert kit.cid_of(used) not in removed
        if kit.cid_of(unused) in removed:
            assert api_b.get("exists", kit.cid_of(unused)).text == "MISSING\n"
    assert api_b.get("exists", kit.cid_of(unused)).text == "MISSING\n"
    assert api_b.get("exists", kit.cid_of(used)).text.startswith("PRESENT:")
    gone = []
    for _ in range(MAXDAYS + 2):  # no more use: removed once the window has passed
        gone += day(update=False)
    assert gone == [kit.cid_of(used)]
    a.service.partner.pull()
    assert api_a.get("exists", kit.cid_of(used)).text == "MISSING\n"
    # A's stamp for the CID, orphaned now, goes at A's next cleanup
    for _ in range(2):
        day(update=False)
    assert kit.cid_of(used) not in a.service.stamps.all_stamps({s.name: s.public for s in a.service.slots})
    api_a.close()
    api_b.close()
    verify_all(a)
    verify_all(b)


@pytest.mark.timeout(60)
def test_use_while_the_cleanup_decides_keeps_the_cid(tmp_path: Path, clock: Clock) -> None:
    cfg = kit.config(tmp_path / "srv", repositories=("user1.example.org",), tables=tables(1))
    with ServiceThread(cfg, clock=clock, background=False) as st:
        svc = st.service
        api = kit.Api(st.url)
        data = kit.tarball(seed="used just in time")
        cid = kit.cid_of(data)
        api.publish(cid, data)
        assert svc.queue.idle(30)
        clock.advance(5 * DAY)
        real_expired = svc.cleaner.expired

        def expired_then_used(now: float) -> dict[str, list[str]]:
            out = real_expired(now)
            assert out == {"user1.example.org": [cid]}
            # meanwhile a job uses the CID and the periodic stamp writer stores the stamp
            assert api.get("update", cid).text.startswith("PRESENT:")
            svc.stamps.flush()
            return out

        svc.cleaner.expired = expired_then_used  # type: ignore[method-assign]
        result = svc.cleaner.clean(svc.slots[0], clock())
        assert result.removed == []
        assert api.get("exists", cid).text.startswith("PRESENT:")
        api.close()
