"""Small-object request rate of the repository server, new against old, on loopback in the same run.

Run: ``python bench/serve.py [--requests N] [--objects K] [--max-seconds S] [--baseline-rev REV]``

A fake repository of ``K`` small objects (``data/xx/<hash>``, 0.2-6 KB, like the client bench's
18,748 objects) plus a manifest is written to a temporary directory. Each server runs in a child
process (so the load client does not share its GIL) on ``127.0.0.1``: ``new`` is
:func:`rcds.serve.http.make_server` of this tree; ``old`` is the threaded ``http.server`` version
of ``rcds.serve`` taken from git (the newest commit at or before ``--baseline-rev`` whose
``serve/handler.py`` still has ``RequestHandler``). A lean raw-socket client in this process
fires ``N`` GETs over one kept-alive connection, either one at a time (``sequential``) or in
pipelined batches of 16 (``pipelined-16``); every answer is checked (status 200, exact body).
Reported: requests per second, and the server's CPU time per request (``/proc/<pid>/stat``).
Every run is bounded by ``N`` and by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import format_table, machine

REPO = "bench.example.org"
DEPTH = 16


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
        files = {}
        for name in ("handler.py", "http.py"):
            shown = subprocess.run(
                ["git", "-C", str(top), "show", f"{commit}:src/rcds/serve/{name}"],
                capture_output=True,
                text=True,
                check=False,
            )
            files[name] = shown.stdout.replace("rcds.serve.handler", "rcds_old_serve.handler")
        if "class RequestHandler(BaseHTTPRequestHandler)" in files["handler.py"]:
            pkg = dest / "rcds_old_serve"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text("")
            for name, text in files.items():
                (pkg / name).write_text(text)
            return commit[:10]
    return None


def child(kind: str, root: str, old_path: str) -> None:
    """Serve ``root`` until stdin closes; print the port first."""
    if kind == "old":
        sys.path.insert(0, old_path)
        from rcds_old_serve.http import make_server  # type: ignore[import-not-found]
    else:
        from rcds.serve.http import make_server
    server = make_server({REPO: root})
    server.start_background()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One kept-alive raw-socket connection that sends GETs and checks every answer."""

    def __init__(self, port: int, bodies: dict[str, bytes]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bodies = bodies
        self.buf = b""

    def request(self, path: str) -> bytes:
        return f"GET /cvmfs/{REPO}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def read_answer(self, path: str) -> None:
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

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise RuntimeError("the server closed the connection")
        return data

    def run(self, paths: list[str], depth: int, deadline: float) -> int:
        """Fetch ``paths`` with ``depth`` requests in flight; return how many were answered."""
        done = 0
        while done < len(paths) and time.monotonic() < deadline:
            batch = paths[done : done + depth]
            self.sock.sendall(b"".join(self.request(p) for p in batch))
            for p in batch:
                self.read_answer(p)
            done += len(batch)
        return done

    def close(self) -> None:
        self.sock.close()


def measure(
    kind: str, root: Path, old_path: str, bodies: dict[str, bytes], args: argparse.Namespace
) -> list[list[str]]:
    """Start server ``kind`` and run both load patterns against it; table rows."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, "--root", str(root), "--old-path", old_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        keys = [k for k in bodies if k.startswith("data/")]
        paths = [keys[i % len(keys)] for i in range(args.requests)]
        warm = Client(port, bodies)
        warm.run(paths[:500], DEPTH, time.monotonic() + args.max_seconds)  # page cache, code paths
        warm.close()
        for mode, depth in (("sequential", 1), (f"pipelined-{DEPTH}", DEPTH)):
            client = Client(port, bodies)
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            n = client.run(paths, depth, time.monotonic() + args.max_seconds)
            seconds, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
            client.close()
            rows.append([kind, mode, str(n), f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{cpu / n * 1e6:.0f}"])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="GETs per server and pattern")
    parser.add_argument("--objects", type=int, default=5000, help="distinct small objects in the tree")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time limit per server and pattern")
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision to take the old server from")
    parser.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--old-path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.old_path)
        return
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-serve-"))
    try:
        root = work / "repo"
        root.mkdir()
        bodies = make_tree(root, args.objects)
        old_rev = old_server_package(work / "old", args.baseline_rev)
        print(machine())
        print(f"{args.objects} objects, {args.requests} GETs per pattern; old server from git {old_rev}")
        rows = []
        for kind in (["old"] if old_rev else []) + ["new"]:
            rows += measure(kind, root, str(work / "old"), bodies, args)
        print(format_table(["server", "pattern", "requests", "seconds", "req/s", "server CPU µs/req"], rows))
        if old_rev:
            for mode in ("sequential", f"pipelined-{DEPTH}"):
                old, new = (float(r[4].replace(",", "")) for r in rows if r[1] == mode)
                print(f"{mode}: new/old = {new / old:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
