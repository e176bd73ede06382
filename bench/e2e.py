"""Publish to worker node, end to end: service → stratum 1 → Squid → client, with and without notifications.

Run: ``python bench/e2e.py [--quick] [--sizes 5,100,1000] [--rounds 5] [--modes notify,poll]
[--replica-interval 30] [--client-ttl 15] [--max-age 61]``

Every part is its own process on 127.0.0.1, as in production:

* the publishing service (``rcds -v server run``, one repository, its embedded broker);
* a stratum 1 (``rcds replica run``: pulls every ``--replica-interval`` s, serves the replica with
  ``Cache-Control: max-age=--max-age`` on the manifest, announces each pulled revision on a
  broker of its own); in mode ``notify`` it also subscribes to the service's broker;
* a real Squid from ``examples/squid/site-squid.conf`` (``rcds.testing.squid``);
* a worker-node client process (``rcds.client`` through the Squid, its own cache), one per mode,
  open and waiting *before* the upload, like a client mount that was there before the job; its
  TTL and Squid's copy of the manifest run on their own clocks. In mode ``notify`` it follows the
  stratum 1's broker (``CVMFS_NOTIFICATION_SERVER``); in both modes it also checks for a new
  revision every ``--client-ttl`` s (``poll``: only that, like today's RCDS with its 15 s TTL and
  30 s replica snapshots, through a site Squid that keeps the manifest for its max-age).

In mode ``poll`` each upload waits a random pause first (uniform up to the manifest's max-age),
so that it falls at a random moment of the stratum 1's interval, Squid's copy of the manifest and
the client's TTL, as uploads do in production (rounds back to back would lock them in step).

A round uploads a fresh tarball (realistic code tree: ``bench/service.py``'s generator, made once
per size; each round XORs every file with its own byte so every object is new) and measures from
the end of the upload (the service answered) to the first file of the tree read completely on the
worker. Breakdown, from the service's log line and from this process's own subscriptions to the
service's broker and the stratum 1's broker (all wall-clock on one machine):

* queue: the upload waited for a publish worker; ingest: decompress, chunk, compress, write
  objects, catalogs and the signed manifest (the service's timing);
* announce: the rest until the service's broker delivered the revision here;
* replica: from there until the stratum 1 announced that it serves the revision (notification
  or interval, plus the pull);
* client: from there until the worker read the file (notification or TTL, new manifest through
  Squid, catalogs and the file through Squid).

Also reported: the CPU seconds each process tree (service with its ingest workers, stratum 1,
client) used from the upload's start to the file read, a figure the machine's load does not
inflate (wall times on a shared machine do).

Bounded: every wait has a time limit (``--round-timeout``); at most 20 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MB, format_table, machine
from e2e_parts import Announcements, Proc, percentile, tar_variant, tree_cpu_seconds

from service import write_tarball  # the realistic code-tree generator

FQRN = "user1.example.org"
ROOT = Path(__file__).resolve().parents[1]
RCDS = [str(Path(sys.executable).with_name("rcds"))]
AIM = {5: 2.0, 100: 5.0}  # p95 seconds for the notify mode


# -- the worker-node client (child process) -----------------------------------------------------


def child_client(spec: dict[str, Any]) -> None:
    """The worker node: open the repository through Squid and report ready; then, for each request
    line on stdin (``{"path": ...}``), wait until ``path`` exists, read it and print the times.

    One process for all the rounds of a mode, like a client mount that was there before the job:
    its TTL and Squid's copy of the manifest run on their own clocks, not in step with the uploads.
    """
    from rcds.client.fetch.notifications import NotificationFollower
    from rcds.client.repository import Repository

    repo = Repository.open_urls(
        [spec["url"]],
        [spec["key"]],
        fqrn=FQRN,
        proxies=spec["proxy"],
        cache_dir=Path(spec["cache"]),
        probe=False,
    )
    follower = None
    if spec["notify"]:
        follower = NotificationFollower(repo, spec["notify"])
        follower.subscription.backoff = (0.05, 0.5)
        follower.start()
        if not follower.subscription.connected.wait(30):
            raise SystemExit("the client could not subscribe to the stratum 1's broker")
    print(json.dumps({"ready": repo.revision}), flush=True)
    ttl = spec["ttl"]
    next_poll = time.monotonic() + ttl
    for request in sys.stdin:
        path = json.loads(request)["path"]
        deadline = time.monotonic() + spec["timeout"]
        while time.monotonic() < deadline:
            if repo.exists(path):
                break
            now = time.monotonic()
            if now >= next_poll:
                repo.refresh(force=True)
                next_poll = now + ttl
                continue
            wait = min(next_poll - now, deadline - now)
            if follower is not None:
                rev = repo.revision
                follower.wait_for(lambda rev=rev: repo.revision > rev, wait)
            else:
                time.sleep(wait)
        else:
            raise SystemExit(f"{path} did not appear within {spec['timeout']} s")
        t_found = time.time()
        size = len(repo.read_bytes(path))
        t_read = time.time()
        out = {"found": t_found, "read": t_read, "bytes": size, "revision": repo.revision}
        print(json.dumps(out), flush=True)
    if follower is not None:
        follower.stop()
    repo.close()


# -- one mode -----------------------------------------------------------------------------------


@dataclass
class Round:
    size_mb: int
    gz_bytes: int
    total: float
    queue: float
    ingest: float
    announce: float
    replica: float
    client: float
    cpu_service: float
    cpu_replica: float
    cpu_client: float


class Chain:
    """The service, a stratum 1 and a Squid, with this process listening to both brokers."""

    def __init__(self, work: Path, args: argparse.Namespace, squid_url: str) -> None:
        self.work = work
        srv = work / "srv"
        srv.mkdir(parents=True)
        (srv / "service.toml").write_text(
            f'base_dir = "{srv}"\nrepositories = ["{FQRN}"]\n'
            '[listen]\nhost = "127.0.0.1"\nport = 0\n[serve]\nhost = "127.0.0.1"\nport = 0\n'
            "[notify]\nbroker = true\n"
        )
        subprocess.run(
            [*RCDS, "server", "init", "--config", str(srv / "service.toml")],
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.service = Proc(
            [*RCDS, "-v", "server", "run", "--config", str(srv / "service.toml")], work / "service.log"
        )
        m = self.service.wait_for(
            r"pubapi at (\S+)/pubapi/, repositories at (\S+), notifications at (\S+)/notif", 120
        )
        self.pubapi, repos, self.s0_broker = m.group(1), m.group(2), m.group(3)
        self.key = srv / "repos" / FQRN / "keys" / f"{FQRN}.pub"
        if not self.key.is_file():
            self.key = next(srv.rglob(f"{FQRN}.pub"))
        self.s0_announce = Announcements(self.s0_broker, FQRN)
        self.squid_url = squid_url
        self.args = args
        self.upstream = f"{repos.rstrip('/')}/{FQRN}"
        self.replica: Proc | None = None
        self.s1_url = self.s1_broker = ""
        self.s1_announce: Announcements | None = None
        self.client: subprocess.Popen[str] | None = None

    def start_replica(self, label: str) -> None:
        """A fresh stratum 1 (its own root) for mode ``label``: ``notify`` or ``poll``, with
        ``/wN`` for N download threads per pull (default: the replica's default, 8)."""
        mode, _, workers = label.partition("/w")
        d = self.work / f"s1-{mode}-{workers}"
        d.mkdir()
        sub = f"subscribe = ['{self.s0_broker}']\n" if mode == "notify" else ""
        (d / "replica.toml").write_text(
            f"[replica]\nroot = 'root'\ninterval = {self.args.replica_interval}\n"
            + (f"workers = {int(workers)}\n" if workers else "")
            + "\n"
            f"[serve]\nport = 0\nroot_max_age = {self.args.max_age}\n\n"
            f"[notify]\n{sub}broker_port = 0\n\n"
            f"[[repository]]\nname = '{FQRN}'\nupstream = '{self.upstream}'\nkey = '{self.key}'\n"
        )
        self.replica = Proc(
            [*RCDS, "-v", "replica", "run", "--config", str(d / "replica.toml")], d / "replica.log"
        )
        m = self.replica.wait_for(r"serving at (\S+)/cvmfs/; notifications at (\S+)/notifications/", 60)
        self.s1_url, self.s1_broker = f"{m.group(1)}/cvmfs/{FQRN}", m.group(2)
        self.replica.wait_for(rf"{FQRN}: revision \d+", 120)
        self.s1_announce = Announcements(self.s1_broker, FQRN)
        if not self.s1_announce.sub.connected.wait(30) or not self.s0_announce.sub.connected.wait(30):
            raise RuntimeError("could not subscribe to the brokers")
        spec = {
            "url": self.s1_url, "key": str(self.key), "proxy": self.squid_url,
            "cache": str(d / "cache"), "timeout": self.args.round_timeout,
            "notify": self.s1_broker if mode == "notify" else None, "ttl": self.args.client_ttl,
        }  # fmt: skip
        self.client = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.client.stdout is not None
        if not self.client.stdout.readline():
            raise RuntimeError("the worker-node client did not start")

    def stop_replica(self) -> None:
        if self.client is not None:
            assert self.client.stdin is not None
            self.client.stdin.close()
            try:
                self.client.wait(30)
            except subprocess.TimeoutExpired:
                self.client.kill()
                self.client.wait(10)
            self.client = None
        if self.s1_announce is not None:
            self.s1_announce.close()
        if self.replica is not None:
            self.replica.stop()

    def upload(self, path: Path, cid: str) -> float:
        """POST the tarball (streamed); the wall-clock time the service answered."""
        import urllib3

        pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=600), retries=False)
        with open(path, "rb") as f:
            headers = {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"}
            r = pool.request("POST", f"{self.pubapi}/pubapi/publish?cid={cid}", body=f, headers=headers)
        t = time.time()
        if r.status != 200:
            raise RuntimeError(f"upload refused: {r.status} {r.data[:200]!r}")
        return t

    def round(self, tarball: Path, first: str, size_mb: int) -> Round:
        import hashlib

        cid = "dune/" + hashlib.sha256(tarball.read_bytes()).hexdigest()
        assert self.replica is not None and self.s1_announce is not None
        client = self.client
        assert client is not None and client.stdin is not None and client.stdout is not None
        mark = self.service.mark()
        cpu0 = [tree_cpu_seconds(p.pid) for p in (self.service.proc, self.replica.proc, client)]  # fmt: skip
        t_end = self.upload(tarball, cid)
        client.stdin.write(json.dumps({"path": f"/sw/{cid}/{first}"}) + "\n")
        client.stdin.flush()
        line = client.stdout.readline()
        if not line:
            raise RuntimeError(f"the client gave up on {cid} (round timeout {self.args.round_timeout} s)")
        got = json.loads(line)
        procs = (self.service.proc, self.replica.proc, client)
        cpu = [tree_cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        m = self.service.wait_for(
            rf"published {cid} into \S+ as revision (\d+) in ([\d.]+) s \(queued ([\d.]+) s", 30, mark
        )
        revision, ingest, queue = int(m.group(1)), float(m.group(2)), float(m.group(3))
        t_signed = self.s0_announce.first_at_least(revision, 10) or float("nan")
        t_replica = self.s1_announce.first_at_least(revision, 10) or float("nan")
        return Round(
            size_mb, tarball.stat().st_size, got["read"] - t_end, queue, ingest,
            t_signed - t_end - queue - ingest, t_replica - t_signed, got["read"] - t_replica,
            cpu[0], cpu[1], cpu[2],
        )  # fmt: skip

    def stop(self) -> None:
        self.stop_replica()
        self.s0_announce.close()
        self.service.stop()


# -- report -------------------------------------------------------------------------------------


def cpu(rounds: list[Round]) -> str:
    """Median CPU seconds of the service, the stratum 1 and the client per round."""
    keys = ("cpu_service", "cpu_replica", "cpu_client")
    return " / ".join(f"{percentile([getattr(r, k) for r in rounds], 50):.1f}" for k in keys)


def report(results: dict[tuple[str, int], list[Round]], markdown: bool) -> str:
    rows = []
    for (mode, size), rounds in results.items():
        totals = [r.total for r in rounds]

        def med(attr: str, rounds: list[Round] = rounds) -> str:
            v = percentile([getattr(r, attr) for r in rounds], 50)
            p50 = percentile([r.total for r in rounds], 50)
            return f"{v:.2f} ({100 * v / p50:.0f}%)" if p50 else "-"

        gz = percentile([r.gz_bytes for r in rounds], 50) / MB
        rows.append([
            f"{mode} {size} MB", f"{gz:.0f}", len(rounds), f"{percentile(totals, 50):.2f}",
            f"{percentile(totals, 95):.2f}", med("queue"), med("ingest"), med("announce"),
            med("replica"), med("client"), cpu(rounds),
        ])  # fmt: skip
    return format_table(
        [
            "mode, upload",
            "MB gz",
            "rounds",
            "p50 s",
            "p95 s",
            "queue",
            "ingest",
            "announce",
            "replica",
            "client",
            "CPU s svc/s1/cl",
        ],
        rows,
        markdown,
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_client(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 MB, 2 rounds, short polling (a smoke test)")
    ap.add_argument("--sizes", default="5,100,1000", help="upload sizes in MB (5,100,1000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per size and mode (5, at most 20)")
    ap.add_argument(
        "--modes", default="notify,poll", help="notify and/or poll (both); notify/w16: 16 replica threads"
    )
    ap.add_argument("--replica-interval", type=float, default=30.0, help="stratum 1 pull interval, s (30)")
    ap.add_argument("--client-ttl", type=float, default=15.0, help="client revision check interval, s (15)")
    ap.add_argument("--max-age", type=int, default=61, help="max-age of the replica's manifest, s (61)")
    ap.add_argument("--round-timeout", type=float, default=600.0, help="limit per round, s (600)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # stop the children on the way out
    if args.quick:
        args.sizes, args.rounds = "5", 2
        args.replica_interval, args.client_ttl, args.max_age = 6.0, 3.0, 12
    args.rounds = max(1, min(args.rounds, 20))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    if not all(m.partition("/w")[0] in ("notify", "poll") for m in modes):
        raise SystemExit("--modes takes notify and/or poll (optionally /wN: N replica download threads)")

    from rcds.testing.squid import Squid

    print(f"# e2e bench: {machine()}")
    print(f"# uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"# stratum 1 pulls every {args.replica_interval:g} s, manifest max-age {args.max_age} s, "
        f"client checks every {args.client_ttl:g} s; {args.rounds} rounds per size and mode",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-e2e-", dir="/tmp"))
    squid = chain = None
    results: dict[tuple[str, int], list[Round]] = {}
    try:
        bases = {}
        for i, mb in enumerate(sizes):
            t = time.monotonic()
            bases[mb] = work / f"base-{mb}.tar.gz"
            write_tarball(bases[mb], mb * MB, seed=200 + i)
            print(f"# generated the {mb} MB base tree in {time.monotonic() - t:.0f} s", flush=True)
        squid = Squid.from_file(ROOT / "examples" / "squid" / "site-squid.conf")
        chain = Chain(work, args, squid.url)
        key = 0
        jitter = random.Random(12)
        for mode in modes:
            chain.start_replica(mode)
            for mb in sizes:
                for n in range(args.rounds):
                    key += 1
                    tarball = work / "round.tar.gz"
                    _, first = tar_variant(bases[mb], tarball, key)
                    if mode.startswith("poll"):  # upload at a random moment of the polling cycles
                        time.sleep(jitter.uniform(0, max(args.max_age, args.replica_interval)))
                    r = chain.round(tarball, first, mb)
                    results.setdefault((mode, mb), []).append(r)
                    print(
                        f"  {mode} {mb} MB round {n + 1}: {r.total:.2f} s (queue {r.queue:.2f}, "
                        f"ingest {r.ingest:.2f}, announce {r.announce:.2f}, replica {r.replica:.2f}, "
                        f"client {r.client:.2f}; CPU s: service {r.cpu_service:.2f}, "
                        f"replica {r.cpu_replica:.2f}, client {r.cpu_client:.2f})",
                        flush=True,
                    )
                    tarball.unlink()
            chain.stop_replica()
    finally:
        if chain is not None:
            chain.stop()
        if squid is not None:
            squid.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("upload finished -> first file read on the worker (breakdown: medians, share of the p50)")
    print(report(results, args.markdown))
    print()
    for mb, aim in AIM.items():
        rounds = results.get(("notify", mb))
        if rounds:
            p95 = percentile([r.total for r in rounds], 95)
            verdict = "met" if p95 <= aim else "MISSED"
            print(f"{mb} MB with notifications: p95 {p95:.2f} s (aim <= {aim:g} s): {verdict}")
    for mb in sizes:
        on = results.get(("notify", mb))
        for mode in modes:
            other = results.get((mode, mb))
            if on and other and mode != "notify":
                a, b = percentile([r.total for r in on], 50), percentile([r.total for r in other], 50)
                print(f"{mb} MB: {mode} p50 / notify p50 = {b / a:.2f}x")
    print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
