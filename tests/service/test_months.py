"""Two partner servers through 90 simulated days on one injected clock.

The real services (API, publish workers, stamps, cleanup, gc, whitelist keeper, partner replicas,
repository servers) run on a clock that starts years away from the real date, so anything that
read the real wall clock instead (a whitelist signed "today", a manifest dated "now") would show
up as expired or out of order. Every simulated day CIDs are published, some are used again with
``update`` through either server, stamps are written and replicated, and every hour each server
does its housekeeping (whitelist check, cleanup at its repositories' hours). Checked at every
cleanup and every day:

* a cleanup removes exactly the CIDs unused (through either server) for ``maxdays``: none early,
  none forgotten; stamps made on one server keep a CID alive on the other;
* a CID uploaded while its repository is being cleaned is published once the cleanup ends;
* no whitelist is ever expired or due: each is re-signed a third before expiry, and the replicas
  carry the partner's fresh one;
* long-lived clients of every repository (own and replica) accept every new revision at the
  simulated date, and every own repository verifies in full;
* disk usage stays bounded: gc reclaims what the cleanups removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rcds.client.repository import Repository
from rcds.clock import utc
from rcds.format.keys import load_public_key_file
from rcds.replica.snapshot import SnapshotResult
from rcds.repo.source import StoreSource
from rcds.repo.verify import verify_repository
from rcds.repo.whitelist_age import WhitelistState, assess_tree
from rcds.service.cleanup import DAY, CleanResult
from rcds.service.config import ServiceConfig
from rcds.service.runner import ServiceThread
from rcds.service.slots import RepoSlot
from rcds.storage.local import LocalStore
from rcds.testing.processes import free_port

import servicekit as kit

HOUR = 3600
DAYS = int(os.environ.get("RCDS_SIM_DAYS", "90"))  # fewer only to try changes out
MAXDAYS = 7
WINDOW = MAXDAYS * DAY
START_HOUR = 12  # A cleans user1 at 12 and user2 at 13, B cleans user3 at 12
PAYLOAD = 16_000  # random (incompressible) bytes per CID
START = dt.datetime(2031, 1, 6).timestamp()  # local midnight, years from the real date


class Clock:
    """The one simulated wall clock of both servers and the clients."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Server:
    """One running service and what the test knows about it."""

    name: str
    st: ServiceThread
    api: kit.Api
    partner: Server | None = None

    @property
    def slots(self) -> list[RepoSlot]:
        return self.st.service.slots


@dataclass
class Model:
    """What must be true: last use of every CID (overall and per server), where it lives."""

    last: dict[str, float] = field(default_factory=dict)
    last_via: dict[str, dict[str, float]] = field(default_factory=dict)
    repo_of: dict[str, str] = field(default_factory=dict)  # present CIDs only
    payload: dict[str, bytes] = field(default_factory=dict)
    removed: int = 0
    kept_by_partner_stamps: int = 0
    raced: int = 0
    raced_expired: int = 0

    def use(self, cid: str, server: str, t: float) -> None:
        self.last[cid] = t
        self.last_via.setdefault(cid, {})[server] = t


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A RAM directory when there is room (the test checks logic over months, not the disk: every
    revision's syncfs would otherwise flush whatever else the machine writes), else ``tmp_path``."""
    shm = Path("/dev/shm")
    try:
        room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    except OSError:
        room = 0
    if room < 512 << 20:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="rcds-months-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers(workdir: Path) -> Iterator[tuple[Server, Server, Clock]]:
    tmp_path = workdir
    clock = Clock(START)
    ports = {k: free_port() for k in ("a_api", "a_repo", "b_api", "b_repo")}
    keys = {"a": tmp_path / "a-keys", "b": tmp_path / "b-keys"}

    def cfg(me: str, other: str, repos: tuple[str, ...]) -> ServiceConfig:
        return kit.config(
            tmp_path / me,
            repositories=repos,
            listen_port=ports[f"{me}_api"],
            serve_port=ports[f"{me}_repo"],
            tables=f"[cleanup]\nmaxdays = {MAXDAYS}\nstart_hour = {START_HOUR}\n"
            f'[replica]\npartner_url = "http://127.0.0.1:{ports[f"{other}_api"]}"\n'
            f'partner_repository_url = "http://127.0.0.1:{ports[f"{other}_repo"]}/cvmfs/@fqrn@"\n'
            f'partner_keys_dir = "{keys[me]}"\n',
        )

    a = ServiceThread(
        cfg("a", "b", ("user1.example.org", "user2.example.org")), clock=clock, background=False
    )
    b = ServiceThread(cfg("b", "a", ("user3.example.org",)), clock=clock, background=False)
    for mine, other in ((keys["a"], b), (keys["b"], a)):
        mine.mkdir()
        for slot in other.service.slots:
            shutil.copy(slot.s0.layout.key("pub"), mine / f"{slot.name}.pub")
    sa, sb = Server("a", a, kit.Api(a.url)), Server("b", b, kit.Api(b.url))
    sa.partner, sb.partner = sb, sa
    try:
        yield sa, sb, clock
    finally:
        for s in (sa, sb):
            s.api.close()
            s.st.stop()


def data_bytes(slot: RepoSlot) -> int:
    """Bytes of every object (and leftover temp file) of a repository."""
    total = 0
    for top, _dirs, files in os.walk(slot.public / "data"):
        total += sum(os.stat(os.path.join(top, f)).st_size for f in files)
    return total


class Simulation:
    """Drives both servers hour by hour and checks the model."""

    def __init__(self, a: Server, b: Server, clock: Clock, tmp: Path) -> None:
        self.a, self.b, self.clock, self.tmp = a, b, clock, tmp
        self.servers = (a, b)
        self.rng = random.Random(20310106)
        self.m = Model()
        self.disk: dict[str, list[int]] = {s.name: [] for srv in self.servers for s in srv.slots}
        self.clients: list[tuple[str, str, Repository]] = []  # repository, "<repo> via <server>", client
        self.revisions: dict[str, int] = {}
        self.seq = 0
        self.spent: dict[str, float] = {}  # real seconds per kind of step, printed at the end

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.spent[what] = self.spent.get(what, 0.0) + time.monotonic() - start

    # -- actions ---------------------------------------------------------------------------
    def publish(self, server: Server, cid: str | None = None) -> str:
        """Publish a new CID (or an expired one again) through ``server``; wait until it is there."""
        if cid is None:
            self.seq += 1
            data = kit.tarball({"lib/x.so": self.rng.randbytes(PAYLOAD)}, seed=f"cid {self.seq}")
            cid = kit.cid_of(data)
            self.m.payload[cid] = data
        r = server.api.publish(cid, self.m.payload[cid])
        assert r.text == "OK\n", r.text
        self.settle(server, cid)
        return cid

    def settle(self, server: Server, cid: str) -> None:
        assert server.st.service.queue.idle(30)
        status = server.api.get("status", cid, headers={"Accept": "application/json"}).json()
        assert status["state"] == "published", status
        self.m.repo_of[cid] = status["repository"]
        self.m.use(cid, server.name, self.clock())

    def use_some(self, n: int) -> None:
        """``update`` ``n`` CIDs, each through a random server; an expired one is published again."""
        for cid in self.rng.sample(sorted(self.m.payload), min(n, len(self.m.payload))):
            server = self.rng.choice(self.servers)
            if cid in self.m.repo_of:
                assert server.api.get("update", cid).text.startswith("PRESENT:")
                self.m.use(cid, server.name, self.clock())
            else:
                assert server.api.get("update", cid).text == "MISSING\n"
                self.publish(server, cid)

    def replicate(self) -> None:
        """Write pending stamps on both servers, then each pulls the other's repositories."""
        for s in self.servers:
            s.st.service.stamps.flush()
        for s in self.servers:
            results = s.st.service.partner.pull()
            assert results and all(isinstance(r, SnapshotResult) for r in results.values()), results

    def housekeeping(self, server: Server) -> None:
        """The service's hourly duties; every cleanup is checked against the model."""
        now = self.clock()
        expected = {slot.name: self.expired(slot.name, now) for slot in server.slots}
        for result in server.st.service.housekeeping():
            self.check_cleanup(server, result, expected[result.repository], now)

    def race_cleanup(self, server: Server) -> None:
        """Clean ``server``'s only repository while a new CID and a just-expired one are uploaded."""
        (slot,) = server.slots
        now = self.clock()
        expected = self.expired(slot.name, now)
        in_gc, release = threading.Event(), threading.Event()
        real_gc = slot.s0.gc

        def held_gc(keep_revisions: int = 1) -> object:  # the real gc, once the uploads are in
            in_gc.set()
            assert release.wait(30)
            return real_gc(keep_revisions)

        slot.s0.gc = held_gc  # type: ignore[method-assign]
        results: list[CleanResult] = []
        worker = threading.Thread(target=lambda: results.extend(server.st.service.housekeeping()))
        worker.start()
        try:
            assert in_gc.wait(30) and slot.cleaning
            self.seq += 1
            data = kit.tarball({"lib/x.so": self.rng.randbytes(PAYLOAD)}, seed=f"raced {self.seq}")
            uploads = [kit.cid_of(data)]
            self.m.payload[uploads[0]] = data
            uploads += sorted(expected)[:1]  # removed a moment ago, uploaded again
            for cid in uploads:
                assert server.api.publish(cid, self.m.payload[cid]).text == "OK\n"
                assert server.api.get("exists", cid).text == "MISSING\n"  # queued behind the cleanup
        finally:
            release.set()
            worker.join(60)
            slot.s0.gc = real_gc  # type: ignore[method-assign]
        (result,) = results
        self.check_cleanup(server, result, expected, now)
        for cid in uploads:
            self.settle(server, cid)
            assert server.api.get("exists", cid).text.startswith("PRESENT:")
        self.m.raced += 1
        self.m.raced_expired += len(uploads) - 1

    # -- checks ----------------------------------------------------------------------------
    def expired(self, repository: str, now: float) -> set[str]:
        return {c for c, r in self.m.repo_of.items() if r == repository and self.m.last[c] < now - WINDOW}

    def check_cleanup(self, server: Server, result: CleanResult, expected: set[str], now: float) -> None:
        assert set(result.removed) == expected, (utc(now), result.repository, result.removed, expected)
        if result.removed:
            assert result.objects_deleted > 0 and result.bytes_freed > 0  # gc followed
        for cid in expected:
            del self.m.repo_of[cid]
        self.m.removed += len(expected)
        for cid, repo in self.m.repo_of.items():  # kept only thanks to the partner's stamps?
            if repo == result.repository and self.m.last_via[cid].get(server.name, 0) < now - WINDOW:
                self.m.kept_by_partner_stamps += 1

    def check_day(self, day: int) -> None:
        now = self.clock()
        for cid in self.m.payload:  # both servers answer for every repository, own or replica
            present = cid in self.m.repo_of
            if self.m.last[cid] >= now - WINDOW:
                assert present, (day, cid)  # used within maxdays: there
            if self.m.last[cid] < now - WINDOW - DAY:
                assert not present, (day, cid)  # unused longer (and a cleanup has run since): gone
            for s in self.servers:
                found = s.st.service.exists(cid)
                assert (found is not None) == present, (day, s.name, cid)
                if present and self.m.last[cid] >= now - DAY:  # today's news, also through the API
                    assert s.api.get("exists", cid).text.startswith("PRESENT:"), (day, s.name, cid)
        self.revisions = {
            slot.name: slot.s0.manifest().revision for srv in self.servers for slot in srv.slots
        }
        for s in self.servers:
            svc = s.st.service
            for slot in s.slots:
                age = assess_tree(slot.name, slot.public, utc(now))
                assert age.state is WhitelistState.OK or age.days_left >= 9, (day, age)
                if day % 7 == 6 or day == DAYS - 1:  # in full weekly; the clients check every day
                    key = load_public_key_file(slot.s0.layout.key("pub"))
                    verify_repository(StoreSource(LocalStore(slot.public)), slot.name, [key], now=utc(now))
                self.disk[slot.name].append(data_bytes(slot))
                live = sum(1 for r in self.m.repo_of.values() if r == slot.name)
                assert self.disk[slot.name][-1] <= (live + 2) * (PAYLOAD + 2_000) + 400_000, (day, slot.name)
            for name, public in svc.partner.publics().items():
                assert assess_tree(name, public, utc(now)).state is not WhitelistState.EXPIRED
            assert s.api.get("status").text == "OK\n", (day, s.name)
        for repository, label, client in self.clients:
            client.refresh(force=True)  # the trust chain again, whitelist expiry at the simulated date
            assert client.last_error is None and not client.offline, (day, label, client.last_error)
            assert client.revision == self.revisions[repository], (day, label)  # it took the newest
            mine = sorted(c for c, r in self.m.repo_of.items() if r == repository)
            fresh = [c for c in mine if self.m.last[c] >= now - DAY]  # published or used today
            for cid in fresh + self.rng.sample(mine, min(2, len(mine))):
                assert client.exists(f"/sw/{cid}/lib/x.so"), (day, label, cid)

    def open_clients(self) -> None:
        """A long-lived client per repository and server (own tree, partner's replica)."""
        for s in self.servers:
            assert s.partner is not None
            for slot in s.slots:
                key = load_public_key_file(slot.s0.layout.key("pub"))
                for via in (s, s.partner):
                    client = Repository.open_urls(
                        [via.st.repo_url(slot.name)],
                        [key],
                        cache_dir=self.tmp / f"cache-{slot.name}-{via.name}",
                        now=lambda: utc(self.clock()),
                        ttl_override=0,
                    )
                    self.clients.append((slot.name, f"{slot.name} via {via.name}", client))

    def close(self) -> None:
        for _, _, c in self.clients:
            c.close()

    # -- the day ---------------------------------------------------------------------------
    def day(self, day: int) -> None:
        """One simulated day. The services pull every 30 s; here they pull after every change
        that matters, so uses reach the partner's cleanup at noon, and each server sees the
        other's removals and new CIDs before the next uses."""
        for hour in range(24):
            with self.timed("housekeeping and cleanups"):
                if hour == START_HOUR and day % 3 == 2:
                    self.housekeeping(self.a)
                    self.race_cleanup(self.b)
                else:
                    for s in self.servers:
                        self.housekeeping(s)
            if hour == 10:
                with self.timed("updates"):
                    self.use_some(4)
            if hour == 14:
                with self.timed("publishes"):
                    self.publish(self.a)
                    self.publish(self.b)
            if hour in (11, 14):
                with self.timed("stamps and replication"):
                    self.replicate()
            self.clock.t += HOUR


@pytest.mark.slow
@pytest.mark.timeout(600)  # well under two minutes on a quiet 2-core machine; a safety net
def test_ninety_days_of_two_partner_servers(servers: tuple[Server, Server, Clock], workdir: Path) -> None:
    a, b, clock = servers
    sim = Simulation(a, b, clock, workdir)
    started, cpu = time.monotonic(), time.process_time()
    sim.replicate()
    sim.open_clients()
    try:
        for day in range(DAYS):
            sim.day(day)
            with sim.timed("daily checks"):
                sim.check_day(day)
            print(f"day {day}: {time.monotonic() - started:.1f} s", flush=True)
    finally:
        sim.close()
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    print(f"\nCPU time of the test process (all its threads): {cpu:.1f} s")
    print(
        f"\n{DAYS} simulated days in {elapsed:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sim.spent.items())
    )
    m = sim.m
    assert clock() - START == DAYS * DAY
    assert m.removed >= DAYS and m.raced == DAYS // 3 and m.raced_expired > DAYS // 6
    assert m.kept_by_partner_stamps > DAYS  # only the partner's stamps kept these alive
    for s in (a, b):
        for slot in s.slots:
            rec = s.st.service.whitelists.records[slot.name]
            assert (rec.resigns, rec.failures) == ((DAYS - 1) // 20, 0), (slot.name, rec)  # day 20, 40...
    published_bytes = len(m.payload) * PAYLOAD
    assert sum(sim.disk[n][-1] for n in sim.disk) < published_bytes / 3  # gc gave most of it back
