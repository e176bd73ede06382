"""The status page and ``/metrics`` at 100,000 CIDs, beside the same service with a handful.

Run: ``python bench/status_page.py [--cids 100000] [--requests 50] [--markdown]`` (under a minute).

A real service (:class:`rcds.service.runner.ServiceThread`, plain HTTP on 127.0.0.1, two
repositories, credential-less loopback requests) publishes 3 real tarballs. Each page is then
fetched ``--requests`` times, one after the other over one keep-alive connection (urllib3), and
the median and 90th percentile of the request time are reported:

* ``few``: as it is (3 CIDs, a few activity records);
* ``cids``: after ``--cids`` CIDs were added to one repository's index the way an own publish
  adds them (``Presence.add``), each with a ``published`` status;
* ``full``: and the activity record filled to its bounds (6 hours of publishes: 6,000, a failure
  list of 60, a queue-length sample per minute), the most the page ever shows.

``/pubapi/ping`` is measured in every state as the baseline (an answer that reads nothing), so
the ratio cids/few of a page is its cost growth with the CID count and ping's ratio shows the
machine's drift between the states.
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


def timings(pool: urllib3.PoolManager, url: str, headers: dict[str, str], n: int) -> tuple[float, float, int]:
    """(median ms, p90 ms, body bytes) of ``n`` sequential GETs."""
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = pool.request("GET", url, headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            raise SystemExit(f"{url}: HTTP {r.status}")
        size = len(r.data)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))], size


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cids", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rcds-bench-page-") as tmp:
        base = Path(tmp)
        (base / "server.toml").write_text(
            f'base_dir = "{base}"\nrepositories = ["b1.example.org", "b2.example.org"]\n'
            "[listen]\nport = 0\n[serve]\nport = 0\n"
        )
        cfg = ServiceConfig.load(base / "server.toml")
        with (
            ServiceThread(cfg, background=False) as st,
            urllib3.PoolManager(maxsize=1, retries=False) as pool,
        ):
            for i in range(3):
                data = make_tar([Entry(f"bin/run{i}.sh", f"echo {i}\n".encode() * 100, mode=0o755)], "gz")
                cid = f"bench/{hashlib.sha256(data).hexdigest()}"
                r = pool.request("POST", f"{st.url}/pubapi/publish?cid={cid}", body=data)
                assert r.status == 200, r.data
            assert st.service.queue.idle(60)
            st.service.presence.refresh()
            results: dict[str, dict[str, tuple[float, float, int]]] = {}
            for state in ("few", "cids", "full"):
                if state == "cids":
                    t0 = time.perf_counter()
                    add_cids(st, args.cids)
                    print(f"added {args.cids} CIDs in {time.perf_counter() - t0:.1f} s", flush=True)
                if state == "full":
                    fill_activity(st)
                js = json.loads(
                    pool.request("GET", st.url + "/status", headers={"Accept": "application/json"}).data
                )
                total = sum(r["cids"] for r in js["repositories"])
                print(f"{state}: {total} CIDs on the page", flush=True)
                results[state] = {
                    label: timings(pool, st.url + path, hdrs, args.requests) for label, path, hdrs in PAGES
                }
    rows = []
    for label, _path, _h in PAGES:
        few, cids, full = (results[s][label] for s in ("few", "cids", "full"))
        rows.append(
            [
                label,
                f"{few[0]:.2f}",
                f"{cids[0]:.2f}",
                f"{full[0]:.2f}",
                f"{full[1]:.2f}",
                f"{cids[0] / few[0]:.2f}",
                f"{full[0] / few[0]:.2f}",
                f"{few[2] / 1024:.0f}/{cids[2] / 1024:.0f}/{full[2] / 1024:.0f}",
            ]
        )
    print(machine())
    print(f"{args.requests} sequential GETs each; {args.cids} CIDs in 'cids' and 'full'")
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
