"""Small-object request rate of the repository server, warm and cold page cache, several versions in one run.

Run: ``python bench/serve.py [--objects K | --source DIR [--max-size B]] [--rounds R] [--servers LIST]
[--patterns LIST]``

A repository of small objects (``data/xx/<hash>``) plus a manifest is written to a temporary
directory: ``K`` synthetic objects of 0.2-6 KB, or with ``--source DIR`` a copy of the files up
to 64 KiB (``--max-size``) of an existing repository directory (only read; e.g. the 18.6k objects
of a real client download, or with ``--max-size 100000000`` every object of the real tree that
``bench/client.py`` publishes). Each server runs in a child process (so the load client does not
share its GIL) on ``127.0.0.1``:

* ``old``: the threaded ``http.server`` version of ``rcds.serve`` taken from git (the newest
  commit at or before ``--baseline-rev`` whose ``serve/handler.py`` still has ``RequestHandler``);
* ``before``: the asyncio ``rcds.serve`` package as committed at ``--before-rev`` (default
  ``HEAD``: the working tree without its uncommitted changes);
* ``new``: :func:`rcds.serve.http.make_server` of this tree;
* ``new-unbatched`` (only if asked for): the same with ``rcds.serve.batch.MAX_COLD = 1``, so
  that every cold file is read by a worker-thread job of its own, as ``before`` did;
* ``nginx`` (only if asked for): nginx as ``bench/nginx_site.py`` runs it (one process,
  ``sendfile on``), the cost to aim at. It closes a connection after 1,000 requests
  (``keepalive_requests``); the client then sends the unanswered requests again on a new one.

A lean raw-socket client in this process checks every answer (status 200, exact body). Load
patterns, each over kept-alive connections:

* ``sequential``: ``N`` GETs over one connection, one at a time, cycling over (at most)
  ``--warm-set`` objects (warm page cache: every one is read just before);
* ``pipelined-16``: ``N`` GETs over one connection in batches of 16 (warm page cache);
* ``cold 2x32``: every object once, in random order, the way ``Fetcher.fetch_many`` asks:
  2 connections, 32 requests in flight on each, topped up when half are answered. Before each
  such run the page cache of every served file is dropped
  (``posix_fadvise(POSIX_FADV_DONTNEED)`` on each), and a sample is checked to be cold;
* ``cold 1x16`` (only if asked for: ``--patterns ...,cold1``): every object once, cold, over one
  connection in batches of 16;
* ``tree 2x32`` (only if asked for: ``--patterns ...,tree``): every object once, in random order,
  as ``cold 2x32`` does, but with every file read just before (what ``rcds get`` of a tree that
  was just published or read asks of the server).

The servers are measured in turn within each of ``R`` rounds (interleaved, since other work on
the machine varies); the table shows the median over the rounds, and the range.
Reported: requests per second, and the server's CPU time per request (``/proc/<pid>/stat``,
all its threads). Every run is bounded by its request count and by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from common import format_table, machine
from nginx_site import start_nginx

REPO = "bench.example.org"
DEPTH = 16
WINDOW, CONNECTIONS = 32, 2  # as rcds.net.pipeline
SMALL = 64 * 1024
SERVERS = ("old", "before", "new", "new-unbatched", "nginx")


def make_tree(root: Path, count: int) -> dict[str, bytes]:
    """Write ``count`` small objects and a manifest; return target path -> body."""
    rng = random.Random(7)
    bodies: dict[str, bytes] = {}
    (root / ".cvmfspublished").write_bytes(b"Cabc\nRdef\nS1\nN" + REPO.encode() + b"\n--\n" + b"0" * 40)
    bodies[".cvmfspublished"] = (root / ".cvmfspublished").read_bytes()
    for i in range(count):
        body = rng.randbytes(int(rng.lognormvariate(7.0, 0.8)) % 6000 + 200)
        digest = hashlib.sha1(body + i.to_bytes(4, "big")).hexdigest()
        rel = f"data/{digest[:2]}/{digest[2:]}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
        bodies[rel] = body
    return bodies


def copy_tree(root: Path, source: Path, max_size: int = SMALL) -> dict[str, bytes]:
    """Copy the manifest and the objects up to ``max_size`` bytes of repository ``source``."""
    bodies: dict[str, bytes] = {}
    for path in [*sorted(source.glob("data/??/*")), source / ".cvmfspublished"]:
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= max_size:
            rel = str(path.relative_to(source))
            body = path.read_bytes()
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(body)
            bodies[rel] = body
    return bodies


def _evict(root: Path, paths: Iterable[str]) -> None:
    """Drop the page cache of the files ``paths`` under ``root``."""
    for rel in paths:
        fd = os.open(root / rel, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_cache(root: Path, bodies: dict[str, bytes]) -> float:
    """Drop the page cache of every served file; return the share of a sample found cold."""
    _evict(root, bodies)
    sample = random.Random(len(bodies)).sample(sorted(bodies), min(200, len(bodies)))
    cold = 0
    for rel in sample:  # a read that must not wait starts the read-ahead: drop these again below
        fd = os.open(root / rel, os.O_RDONLY)
        try:
            if os.preadv(fd, [bytearray(max(1, len(bodies[rel])))], 0, os.RWF_NOWAIT) < len(bodies[rel]):
                cold += 1
        except BlockingIOError:
            cold += 1
        finally:
            os.close(fd)
    time.sleep(0.2)
    _evict(root, sample)
    return cold / len(sample)


def warm_cache(root: Path, paths: list[str]) -> None:
    """Read every file of ``paths`` once (into the page cache)."""
    for rel in set(paths):
        (root / rel).read_bytes()


def _git_show(top: Path, commit: str, path: str) -> str | None:
    shown = subprocess.run(
        ["git", "-C", str(top), "show", f"{commit}:{path}"], capture_output=True, text=True, check=False
    )
    return shown.stdout if shown.returncode == 0 else None


def old_server_package(dest: Path, rev: str) -> str | None:
    """Copy the threaded server of the newest commit at or before ``rev`` into ``dest``; its revision."""
    top = Path(__file__).resolve().parent.parent
    revs = subprocess.run(
        ["git", "-C", str(top), "rev-list", "--max-count=50", rev, "--", "src/rcds/serve/handler.py"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for commit in revs:
        files = {
            name: (_git_show(top, commit, f"src/rcds/serve/{name}") or "").replace(
                "rcds.serve.handler", "rcds_old_serve.handler"
            )
            for name in ("handler.py", "http.py")
        }
        if "class RequestHandler(BaseHTTPRequestHandler)" in files["handler.py"]:
            pkg = dest / "rcds_old_serve"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text("")
            for name, text in files.items():
                (pkg / name).write_text(text)
            return commit[:10]
    return None


def before_server_package(dest: Path, rev: str) -> str | None:
    """Copy the ``rcds.serve`` package as of ``rev`` into ``dest`` as ``rcds_before_serve``; its revision."""
    top = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(top), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    listing = subprocess.run(
        ["git", "-C", str(top), "ls-tree", "--name-only", commit, "src/rcds/serve/"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not commit or "src/rcds/serve/connection.py" not in listing:
        return None
    pkg = dest / "rcds_before_serve"
    pkg.mkdir(parents=True, exist_ok=True)
    for path in listing:
        if path.endswith(".py"):
            text = _git_show(top, commit, path) or ""
            (pkg / Path(path).name).write_text(text.replace("rcds.serve.", "rcds_before_serve."))
    return commit[:10]


def child(kind: str, root: str, pkg_path: str) -> None:
    """Serve ``root`` until stdin closes; print the port first."""
    sys.path.insert(0, pkg_path)
    if kind == "old":
        from rcds_old_serve.http import make_server  # type: ignore[import-not-found]
    elif kind == "before":
        from rcds_before_serve.http import make_server  # type: ignore[import-not-found]
    else:
        from rcds.serve import batch
        from rcds.serve.http import make_server

        if kind == "new-unbatched":
            batch.MAX_COLD = 1
    server = make_server({REPO: root})
    server.start_background()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One kept-alive raw-socket connection that sends GETs and checks every answer."""

    def __init__(self, port: int, bodies: dict[str, bytes]) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bodies = bodies
        self.buf = b""
        self.inflight: deque[str] = deque()

    def request(self, path: str) -> bytes:
        return f"GET /cvmfs/{REPO}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def send(self, paths: list[str]) -> None:
        self.sock.sendall(b"".join(self.request(p) for p in paths))
        self.inflight.extend(paths)

    def read_answer(self) -> None:
        path = self.inflight.popleft()
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        head = self.buf[:end]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{path}: {head[:40]!r}")
        at = head.find(b"Content-Length: ") + 16
        size = int(head[at : head.find(b"\r\n", at)])
        start = end + 4
        while len(self.buf) < start + size:
            self.buf += self._recv()
        if self.buf[start : start + size] != self.bodies[path]:
            raise RuntimeError(f"{path}: wrong body")
        self.buf = self.buf[start + size :]
        if b"\r\nConnection: close" in head:  # nginx: keepalive_requests reached
            self.reconnect()

    def reconnect(self) -> None:
        """Open a new connection and send the requests still unanswered again."""
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        paths, self.inflight = list(self.inflight), deque()
        if paths:
            self.send(paths)

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise RuntimeError("the server closed the connection")
        return data

    def run(self, paths: list[str], depth: int, deadline: float) -> int:
        """Fetch ``paths`` in batches of ``depth``; return how many were answered."""
        done = 0
        while done < len(paths) and time.monotonic() < deadline:
            batch = paths[done : done + depth]
            self.send(batch)
            for _ in batch:
                self.read_answer()
            done += len(batch)
        return done

    def close(self) -> None:
        self.sock.close()


def run_client(port: int, bodies: dict[str, bytes], paths: list[str], depth: int, deadline: float) -> int:
    """Fetch ``paths`` over one connection in batches of ``depth``; return how many were answered."""
    client = Client(port, bodies)
    try:
        return client.run(paths, depth, deadline)
    finally:
        client.close()


def run_window(port: int, bodies: dict[str, bytes], paths: list[str], deadline: float) -> int:
    """Fetch ``paths`` as ``fetch_many`` does (see the module doc); return how many were answered."""
    lanes = [Client(port, bodies) for _ in range(CONNECTIONS)]
    todo, done = deque(paths), 0
    try:
        while (todo or any(lane.inflight for lane in lanes)) and time.monotonic() < deadline:
            for lane in lanes:
                if todo and len(lane.inflight) <= WINDOW // 2:
                    lane.send([todo.popleft() for _ in range(min(WINDOW - len(lane.inflight), len(todo)))])
                if lane.inflight:
                    lane.read_answer()
                    done += 1
    finally:
        for lane in lanes:
            lane.close()
    return done


class Server:
    """A server of one ``kind`` in a child process."""

    def __init__(self, kind: str, root: Path, pkg_path: str) -> None:
        self.kind = kind
        self.proc: subprocess.Popen[str] | subprocess.Popen[bytes]
        if kind == "nginx":
            self.proc, url = start_nginx(root, REPO, Path(pkg_path).parent / "nginx", [])
            self.port = int(url.split(":")[2].split("/")[0])
            return
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", kind, "--root", str(root), "--pkg-path", pkg_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def measure(self, run: Callable[[], int], n_expected: int) -> tuple[float, float]:
        """Call ``run()`` (returning the number of answers); return (requests/s, CPU µs/request)."""
        cpu0, t0 = cpu_seconds(self.proc.pid), time.perf_counter()
        n = run()
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(self.proc.pid) - cpu0
        if n != n_expected:
            print(f"  ({self.kind}: {n} of {n_expected} answered within the time limit)")
        return n / seconds, cpu / max(n, 1) * 1e6

    def stop(self) -> None:
        if self.kind == "nginx":
            self.proc.terminate()
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="GETs per server and warm pattern")
    parser.add_argument("--objects", type=int, default=5000, help="distinct small synthetic objects")
    parser.add_argument("--warm-set", type=int, default=5000, help="distinct objects of the warm patterns")
    parser.add_argument("--source", type=Path, help="copy the small files of this repository instead")
    parser.add_argument("--max-size", type=int, default=SMALL, help="largest object copied by --source")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of everything")
    parser.add_argument("--servers", default="old,before,new", help="which servers, comma-separated")
    parser.add_argument("--patterns", default="sequential,pipelined,cold", help="which load patterns")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per server and pattern")
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision to take the old server from")
    parser.add_argument("--before-rev", default="HEAD", help="git revision to take the 'before' server from")
    parser.add_argument("--child", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--pkg-path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.pkg_path)
        return
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-serve-", dir="/var/tmp"))
    servers: list[Server] = []
    try:
        root = work / "repo"
        root.mkdir()
        bodies = copy_tree(root, args.source, args.max_size) if args.source else make_tree(root, args.objects)
        os.sync()  # written pages must be clean before they can be dropped
        revs = {
            "old": old_server_package(work / "pkgs", args.baseline_rev),
            "before": before_server_package(work / "pkgs", args.before_rev),
            "new": "working tree",
            "new-unbatched": "working tree",
            "nginx": "nginx",
        }
        kinds = [k for k in args.servers.split(",") if k in SERVERS and revs[k]]
        print(machine())
        print(
            f"{len(bodies) - 1} objects ({sum(map(len, bodies.values())) / 1e6:.1f} MB), "
            f"{args.requests} GETs per warm pattern, {args.rounds} rounds; "
            + ", ".join(f"{k}: {revs[k]}" for k in kinds)
        )
        servers = [Server(kind, root, str(work / "pkgs")) for kind in kinds]
        keys = [k for k in bodies if k.startswith("data/")]
        warm_keys = keys[: args.warm_set]
        warm_paths = [warm_keys[i % len(warm_keys)] for i in range(args.requests)]
        cold_paths = random.Random(11).sample(keys, len(keys))
        names = {
            "sequential": "sequential",
            "pipelined": f"pipelined-{DEPTH}",
            "cold": f"cold {CONNECTIONS}x{WINDOW}",
            "cold1": f"cold 1x{DEPTH}",
            "tree": f"tree {CONNECTIONS}x{WINDOW}",
        }
        patterns = [names[p] for p in args.patterns.split(",") if p in names]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        coldness: list[float] = []
        for server in servers:  # page cache and code paths
            warm = Client(server.port, bodies)
            warm.run(warm_paths[:500], DEPTH, time.monotonic() + args.max_seconds)
            warm.close()
        for rnd in range(args.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]
            for pattern in patterns:
                for server in order:
                    deadline = time.monotonic() + args.max_seconds
                    cold = pattern.startswith("cold")
                    if cold:
                        coldness.append(drop_cache(root, bodies))
                    else:
                        warm_cache(root, cold_paths if pattern == names["tree"] else warm_paths)
                    paths = cold_paths if cold or pattern == names["tree"] else warm_paths
                    run: Callable[[], int]
                    if pattern in (names["cold"], names["tree"]):
                        run = functools.partial(run_window, server.port, bodies, paths, deadline)
                    else:
                        depth = 1 if pattern == "sequential" else DEPTH
                        run = functools.partial(run_client, server.port, bodies, paths, depth, deadline)
                    expected = len(paths)
                    results.setdefault((server.kind, pattern), []).append(server.measure(run, expected))
        rows = []
        for pattern in patterns:
            for kind in kinds:
                runs = results[(kind, pattern)]
                rate = statistics.median(r for r, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                spread = f"{min(r for r, _ in runs):,.0f}-{max(r for r, _ in runs):,.0f}"
                cspread = f"{min(c for _, c in runs):.0f}-{max(c for _, c in runs):.0f}"
                rows.append([kind, pattern, f"{rate:,.0f}", spread, f"{cpu:.0f}", cspread])
        print(format_table(["server", "pattern", "req/s", "(range)", "server CPU µs/req", "(range)"], rows))
        if coldness:
            print(f"cold check: {min(coldness):.0%}-{max(coldness):.0%} of a 200-file sample not cached")
        for pattern in patterns:
            med = {k: statistics.median(r for r, _ in results[(k, pattern)]) for k in kinds}
            cpus = {k: statistics.median(c for _, c in results[(k, pattern)]) for k in kinds}
            for base in ("before", "old"):
                if base in med and "new" in med:
                    print(
                        f"{pattern}: new/{base} = {med['new'] / med[base]:.2f}x req/s, "
                        f"{cpus['new'] / cpus[base]:.2f}x CPU/req"
                    )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
