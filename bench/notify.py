"""Latency of a revision notification: POST to the broker → event read by the subscriber(s).

Run: ``python bench/notify.py [--rounds R] [--subscribers 1,100] [--max-seconds S]``

The broker runs as ``rcds notify serve`` in a child process on ``127.0.0.1`` (its own
interpreter, as in production). This process holds the publisher and the subscribers
(:class:`rcds.net.notify_stream.Subscription`, one thread each, as a client or a replica runs
it). Each round POSTs a fresh, validly signed manifest (one revision higher) and waits until
every subscriber has read it; reported per scenario, over the rounds: the time until the POST is
answered, until the first subscriber and until the last subscriber has the message.

Baseline in the same run: the POST round trip of a message for a repository nobody subscribes
to (an HTTP request to the broker doing the same parsing and checks, no fan-out); the ratios
say what the fan-out and the event stream add. For scale, a client without notifications sees a
revision after half its TTL on average (the service's repositories: TTL 15 s, so ~7.5 s; stock
default 240 s). Bounded: ``R`` rounds per scenario, each round at most 5 s, the whole run at most
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rcds.format import keys
from rcds.format.notification import Activity
from rcds.net.notify_post import post_activity
from rcds.net.notify_stream import Subscription
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, proc_status_kib

NAME = "bench.example.org"
OTHER = "nobody.example.org"


class Receipts:
    """When each subscriber read each revision."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.times: dict[int, list[float]] = {}

    def add(self, revision: int) -> None:
        t = time.perf_counter()
        with self.cond:
            self.times.setdefault(revision, []).append(t)
            self.cond.notify_all()

    def wait(self, revision: int, count: int, timeout: float) -> list[float]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.times.get(revision, ())) >= count, timeout)
            return list(self.times.get(revision, ()))


def follow(sub: Subscription, receipts: Receipts) -> None:
    for a in sub:
        receipts.add(a.signed_manifest().manifest.revision)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def start_broker() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcds.cli.main", "notify", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "broker at " not in line:
        proc.kill()
        raise SystemExit(f"the broker did not start: {line!r}")
    return proc, line.split("broker at ")[1].split("/notifications/")[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--subscribers", default="1,100", help="comma-separated subscriber counts")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--idle", type=int, default=500, help="idle subscribers for the broker memory figure")
    args = ap.parse_args()
    counts = [int(x) for x in args.subscribers.split(",")]
    deadline = time.monotonic() + args.max_seconds

    with tempfile.TemporaryDirectory(prefix="rcds-bench-notify-") as tmp:
        for name in (NAME, OTHER):
            create_repository(Path(tmp) / name, Settings(name=name))
        signed = {}
        for name in (NAME, OTHER):
            s0 = Stratum0(Path(tmp) / name, name)
            key = keys.load_private_key(s0.layout.key("key").read_bytes())
            base = s0.manifest()
            total = args.rounds * (len(counts) + 1)
            signed[name] = [
                Activity.of(base.evolve(revision=r).sign(key)).to_json() for r in range(1, total + 1)
            ]
        broker, url = start_broker()
        rows: list[tuple[str, list[float], list[float], list[float]]] = []
        try:
            for i in range(10):  # warm-up: connections, the broker's first requests
                post_activity(url, signed[OTHER][-1 - i])
            base_rt = []
            for i in range(args.rounds):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                post_activity(url, signed[OTHER][i])
                base_rt.append(time.perf_counter() - t0)
            rows.append(("baseline: POST round trip, no subscriber", base_rt, [], []))
            revision = 0
            for n in counts:
                receipts = Receipts()
                subs = [Subscription(url, NAME) for _ in range(n)]
                threads = [threading.Thread(target=follow, args=(s, receipts), daemon=True) for s in subs]
                for t in threads:
                    t.start()
                for s in subs:
                    s.connected.wait(30)
                time.sleep(0.5)  # the kept last message (if any) is delivered on subscribe
                answered, first, last = [], [], []
                for _ in range(args.rounds):
                    if time.monotonic() > deadline:
                        break
                    revision += 1
                    t0 = time.perf_counter()
                    post_activity(url, signed[NAME][revision - 1])
                    answered.append(time.perf_counter() - t0)
                    got = receipts.wait(revision, n, 5.0)
                    if len(got) < n:
                        print(f"round {revision}: only {len(got)} of {n} subscribers got it in 5 s")
                        continue
                    first.append(min(got) - t0)
                    last.append(max(got) - t0)
                for s in subs:
                    s.close()
                for t in threads:
                    t.join(10)
                rows.append((f"{n} subscriber(s)", answered, first, last))
            idle_kib = idle_cost(broker.pid, url, args.idle)
        finally:
            broker.terminate()
            broker.wait(20)

    base = statistics.median(rows[0][1])
    print(f"# bench/notify.py on {machine()}")
    print(f"# rounds: {args.rounds} per scenario; times in ms (p50 / p95); ratio = p50 / baseline p50")
    print(f"{'scenario':44} {'POST answered':>16} {'first receipt':>16} {'last receipt':>16} {'ratio':>7}")
    for label, answered, first, last in rows:

        def cell(v: list[float]) -> str:
            return f"{pct(v, 0.5) * 1000:6.2f} / {pct(v, 0.95) * 1000:6.2f}" if v else "-"

        ratio = f"{pct(last, 0.5) / base:6.1f}x" if last else f"{pct(answered, 0.5) / base:6.1f}x"
        print(f"{label:44} {cell(answered):>16} {cell(first):>16} {cell(last):>16} {ratio:>7}")
    before, after, n = idle_kib
    print(
        f"# broker RSS: {before / 1024:.1f} MiB, with {n} idle subscribers {after / 1024:.1f} MiB "
        f"= {(after - before) / max(n, 1):.1f} KiB per subscriber"
    )
    return 0


def idle_cost(pid: int, url: str, n: int) -> tuple[int, int, int]:
    """The broker's RSS (KiB) before and with ``n`` idle stock-style subscriptions (raw sockets)."""
    host, port = url.removeprefix("http://").split(":")
    body = ('{"version":1,"repository":"' + NAME + '"}').encode()
    request = (
        f"GET /notifications/subscribe HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: cvmfs/2.11\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    before = proc_status_kib("VmRSS", str(pid))
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(request)
            socks.append(s)
        for s in socks:
            s.recv(65536)  # the head and the kept message: the subscription is registered
        time.sleep(0.5)
        return before, proc_status_kib("VmRSS", str(pid)), n
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
