"""The status page and ``/metrics`` at 100,000 CIDs, beside the same service with a handful.

Run: ``python bench/status_page.py [--cids 100000] [--requests 60] [--rounds 6] [--markdown]``
(about a minute).

Three real services (:class:`rcds.service.runner.ServiceThread` in this process, plain HTTP on
127.0.0.1, two repositories each, credential-less loopback requests) each publish 3 real tarballs;
then they differ in what they hold. Each page of each service is fetched ``--requests`` times, one
after the other over keep-alive connections (urllib3), interleaved over ``--rounds`` rounds so the
machine's load falls on every state alike; the median and the 90th percentile are reported:

* ``few``: as it is (3 CIDs, a few activity records);
* ``cids``: after ``--cids`` CIDs were added to one repository's index the way an own publish
  adds them (``Presence.add``), each with a ``published`` status;
* ``full``: and the activity record filled to its bounds (6 hours of publishes: 6,000, a failure
  list of 60, a queue-length sample per minute), the most the page ever shows.

``/pubapi/ping`` is measured in every state as the baseline (an answer that reads nothing): the
ratio cids/few of a page is its cost growth with the CID count, ping's ratio shows the noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from rcds.service.activity import PublishEvent
from rcds.service.config import ServiceConfig
from rcds.service.runner import ServiceThread
from rcds.service.status import State

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import format_table, machine

from testkit import Entry, make_tar

PAGES = (
    ("/pubapi/ping (baseline)", "/pubapi/ping", {}),
    ("/status (HTML)", "/status", {}),
    ("/status (JSON)", "/status", {"Accept": "application/json"}),
    ("/metrics", "/metrics", {}),
)


def add_cids(st: ServiceThread, cids: int) -> None:
    """Add ``cids`` CIDs to the first repository's index and status book."""
    svc = st.service
    name = svc.slots[0].name
    idx = svc.presence.index(name)
    rev = (idx.revision.revision if idx.revision else 0) + 1
    for i in range(cids):
        cid = f"bench/{i:064x}"
        svc.presence.add(name, cid, rev)
        svc.status.set(cid, State.PUBLISHED, name)


def fill_activity(st: ServiceThread) -> None:
    """Fill the activity record to its bounds (6 hours of history)."""
    svc = st.service
    name = svc.slots[0].name
    rev = 1
    now = time.time()
    act = svc.activity
    for i in range(6000):
        t = now - 6 * 3600 + i * 3.6
        act.published(PublishEvent(f"bench/{i:064x}", name, rev, 5 << 20, 0.3 + (i % 50) / 10, t, "bench"))
    for i in range(60):
        act.failed(f"bench/f{i}", name, "the archive is corrupt or truncated")
    for m in range(360):
        act.queue_length.add(now - 6 * 3600 + m * 60, m % 7)


def start(base: Path, pool: urllib3.PoolManager) -> ServiceThread:
    """A service under ``base`` with 3 real publishes."""
    base.mkdir(parents=True)
    (base / "server.toml").write_text(
        f'base_dir = "{base}"\nrepositories = ["b1.example.org", "b2.example.org"]\n'
        "[listen]\nport = 0\n[serve]\nport = 0\n"
    )
    st = ServiceThread(ServiceConfig.load(base / "server.toml"), background=False)
    for i in range(3):
        data = make_tar([Entry(f"bin/run{i}.sh", f"echo {i}\n".encode() * 100, mode=0o755)], "gz")
        cid = f"bench/{hashlib.sha256(data).hexdigest()}"
        r = pool.request("POST", f"{st.url}/pubapi/publish?cid={cid}", body=data)
        assert r.status == 200, r.data
    assert st.service.queue.idle(60)
    st.service.presence.refresh()
    return st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cids", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    states = ("few", "cids", "full")
    per_round = max(1, args.requests // args.rounds)
    samples: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="rcds-bench-page-") as tmp,
        urllib3.PoolManager(retries=False) as pool,
    ):
        services = {state: start(Path(tmp) / state, pool) for state in states}
        try:
            t0 = time.perf_counter()
            add_cids(services["cids"], args.cids)
            add_cids(services["full"], args.cids)
            fill_activity(services["full"])
            print(f"added {args.cids} CIDs to two services in {time.perf_counter() - t0:.1f} s", flush=True)
            for state, st in services.items():
                js = json.loads(
                    pool.request("GET", st.url + "/status", headers={"Accept": "application/json"}).data
                )
                print(f"{state}: {sum(r['cids'] for r in js['repositories'])} CIDs on the page", flush=True)
            for _ in range(args.rounds):  # interleaved, so the machine's load hits every state alike
                for label, path, hdrs in PAGES:
                    for state, st in services.items():
                        for _ in range(per_round):
                            t1 = time.perf_counter()
                            r = pool.request("GET", st.url + path, headers=hdrs)
                            samples.setdefault((label, state), []).append((time.perf_counter() - t1) * 1000)
                            assert r.status == 200, (path, r.status)
                            sizes[(label, state)] = len(r.data)
        finally:
            for st in services.values():
                st.stop()
    rows = []
    for label, _path, _h in PAGES:
        med = {s: statistics.median(samples[(label, s)]) for s in states}
        full = sorted(samples[(label, "full")])
        rows.append(
            [
                label,
                f"{med['few']:.2f}",
                f"{med['cids']:.2f}",
                f"{med['full']:.2f}",
                f"{full[int(0.9 * (len(full) - 1))]:.2f}",
                f"{med['cids'] / med['few']:.2f}",
                f"{med['full'] / med['few']:.2f}",
                "/".join(f"{sizes[(label, s)] / 1024:.0f}" for s in states),
            ]
        )
    print(machine())
    print(
        f"{per_round * args.rounds} GETs per page and state over keep-alive connections, {args.rounds} rounds"
    )
    headers = [
        "page",
        "few p50 ms",
        "cids p50 ms",
        "full p50 ms",
        "full p90 ms",
        "cids/few",
        "full/few",
        "KiB few/cids/full",
    ]
    print(format_table(headers, rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
