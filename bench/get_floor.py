"""The measured floor of ``rcds get`` against ``curl | tar -x`` (issue 13), side by side in one run.

Run: ``python bench/get_floor.py [--keep DIR] [--rounds N] [--out DIR] [--server engine|nginx]
[--markdown]``, where ``DIR`` (default ``/var/tmp/s7get-cb``) is the work directory of an earlier
``bench/client.py --keep DIR`` run: its published real tree (12,958 files, 479 MB) and ``venv.tar``
are served again on loopback (the engine's server in a process of its own, as ``client.py`` does;
``--server nginx``: ``bench/nginx_site.py``'s nginx). In ``--rounds`` alternating rounds (the order
reversed every other round), each run after a ``sync``, every output in a fresh directory on the
tmpfs ``--out`` (default ``/dev/shm``):

1. ``tar``: ``curl -sf URL/venv.tar | tar -xf - -C DIR`` (the issue's baseline, the tarball read
   into the page cache first, as ``client.py`` does: ``bench/warm.py``);
2. ``get``: ``rcds get`` of the whole tree with an empty cache (the same command as ``client.py``,
   its bytecode cached, the repository's files read into the page cache first);
3. ``work``: the work floor. Every object a copy of the tree needs (each regular file's object, or
   all chunks of a chunked file; each distinct object once, with every file it goes to) is read
   into one shared memory buffer BEFORE timing (no network, catalog or planning). The objects are
   split into two halves by bytes (compressed + plain bytes written, largest first, each to the
   lighter half); two forked processes each do, per object, only the C-level work a verified copy
   cannot skip: SHA-1 of the stored bytes compared with the name, libdeflate's
   ``zlib_decompress(data, size)`` (the call of ``rcds.format.wholeinflate``), and per file
   ``os.open(O_CREAT|O_EXCL|O_WRONLY)``, ``write``, ``close`` in a flat directory of its own on
   the tmpfs (chunks: ``pwrite`` at their offset into their file in a shared flat directory).
   Wall from the first fork to the last exit; CPU of both children (``wait4``);
4. ``recv``: the receive floor. The same objects over HTTP from the same loopback server: two
   forked processes, each one bare socket (``TCP_NODELAY``) pipelining prepared ``GET`` requests
   for its half, up to 128 in flight (as a worker of ``rcds get``), reading every response into a
   1 MiB buffer and discarding the bodies (each answer's status and ``Content-Length``, the
   object's stored size, checked); CPU of both children plus the server's;
5. ``both``: 3 and 4 together, the floor of the data path: each of the two processes receives its
   half as in 4 and does, per object as its body arrives, the work of 3; ``then``: each receives
   its half as in 4 into memory (every body kept), and only then does the work of 3 on it;
6. ``python``: ``python -c "import hashlib, deflate"`` (the interpreter floor); for comparison
   ``python -m rcds.cli.main --version`` (the CLI's start, no command module) and
   ``python -m rcds.cli.main get --help`` (the imports ``rcds get`` needs to parse its command).

Then the arithmetic: the aim's budget (1.5 x the median wall of ``tar``), the floor computed from
CPU on two cores (``python`` start-up + (work CPU + receive CPU incl. the server) / 2), the floor
measured (``python`` start-up + the wall of ``both`` or ``then``, the faster), their ratios to
``tar``, and what is left of the budget for everything else ``rcds get`` does. Before the rounds,
one ``rcds get`` and each start-up command run once, not timed: the bytecode cache
(``PYTHONPYCACHEPREFIX``, a fresh one on ``--out``) then holds every module they import. One
core's CPU per step of the work (SHA-1, inflate, and the Adler-32 re-check ``rcds`` does after
libdeflate's own) is measured while the objects are loaded and checked, before the rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from client_child import TREE
from client_runs import cell, children_cpu, use_bytecode_cache
from common import MB, format_table, machine, proc_cpu_seconds
from get_floor_parts import (
    TIMEOUT,
    Obj,
    do_work,
    forked,
    halves,
    load_tree,
    make_empties,
    receive_half,
    work_half,
)
from nginx_site import start_nginx
from warm import repository_files, warm

from client import REPO, serve_in_child

Run = tuple[float, float, float, float]
"""A timed run: wall, client CPU, server CPU, client system CPU (seconds)."""


def children_system() -> float:
    """System CPU seconds of this process's finished children so far."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


class Floor:
    """The served repository, the loaded tree and the timed runs of one bench run."""

    def __init__(self, keep: Path, scratch: Path, server: str) -> None:
        self.public = keep / "repo" / "public"
        self.key = str(keep / "repo" / "keys" / f"{REPO}.pub")
        self.scratch = scratch
        self.n = 0
        self.served = repository_files(self.public, ("venv.tar", "venv.tar.gz"))
        self.server: subprocess.Popen[str] | subprocess.Popen[bytes]
        if server == "nginx":
            self.server, self.url = start_nginx(self.public, REPO, self.scratch / "nginx", ["venv.tar"])
        else:
            self.server = serve_in_child(self.public)
            assert self.server.stdout is not None
            self.url = self.server.stdout.readline().strip()
        parts = urlsplit(self.url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        t0 = time.perf_counter()
        try:
            self.tree = load_tree(self.url, self.key, self.public, self.scratch)
        except BaseException:
            self.server.terminate()
            self.server.wait(timeout=30)
            raise
        self.load_seconds = time.perf_counter() - t0
        self.split = halves(self.tree)
        prefix, host = parts.path.rstrip("/"), parts.netloc
        self.requests = [
            [f"GET {prefix}/{o.name} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for o in objs]
            for objs, _ in self.split
        ]

    def fresh(self) -> Path:
        """A new empty directory on the tmpfs."""
        self.n += 1
        path = self.scratch / f"run-{self.n}"
        path.mkdir()
        return path

    def server_cpu(self) -> float:
        """The server's CPU seconds so far."""
        return proc_cpu_seconds(self.server.pid)

    def command(self, cmd: list[str] | str, warm_first: list[Path], **kw: object) -> Run:
        """(wall, client CPU, server CPU, client system CPU) of a command, after a ``sync`` and
        warming its files."""
        os.sync()
        warm(warm_first)
        c0, s0, k0 = children_cpu(), self.server_cpu(), children_system()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, timeout=TIMEOUT, **kw)  # type: ignore[call-overload]
        wall = time.perf_counter() - t0
        return wall, children_cpu() - c0, self.server_cpu() - s0, children_system() - k0

    def tar(self) -> Run:
        """``curl | tar -x`` of the plain tarball (``bench/client.py``'s baseline)."""
        dest = self.fresh()
        try:
            cmd = f"curl -sf {self.url}/venv.tar | tar -xf - -C {dest}"
            return self.command(cmd, [self.public / "venv.tar"], shell=True)
        finally:
            shutil.rmtree(dest)

    def get(self) -> Run:
        """``rcds get`` of the whole tree with an empty cache (``bench/client.py``'s command)."""
        work = self.fresh()
        cmd = [sys.executable, "-m", "rcds.cli.main", "get", "--no-progress", "--server", self.url]
        cmd += ["--key", self.key, "--cache", str(work / "cache"), f"{REPO}:{TREE}", str(work / "out")]
        try:
            return self.command(cmd, self.served, stdout=subprocess.DEVNULL)
        finally:
            shutil.rmtree(work)

    def startup(self, cmd: list[str]) -> Run:
        """A start-up alone (no server involved)."""
        return self.command(cmd, [], stdout=subprocess.DEVNULL)

    def pair(self, mode: str) -> Run:
        """A floor: two forked processes, one per half (``work``, ``recv``, ``both``, ``then``:
        see the module docstring)."""
        base = self.fresh()
        shared = base / "chunked"
        shared.mkdir()
        jobs: list[Callable[[], None]] = []
        for i, (objs, empties) in enumerate(self.split):
            own = base / str(i)
            own.mkdir()
            jobs.append(self._job(mode, i, objs, empties, str(own), str(shared)))
        os.sync()
        if mode != "work":
            warm(self.served)
        s0 = self.server_cpu()
        try:
            wall, cpu = forked(jobs)
            server = self.server_cpu() - s0
        finally:
            shutil.rmtree(base)
        return wall, sum(u + k for u, k in cpu), server, sum(k for _, k in cpu)

    def _job(
        self, mode: str, i: int, objs: list[Obj], empties: list[int], own: str, shared: str
    ) -> Callable[[], None]:
        buffer, address, requests = self.tree.buffer, self.address, self.requests[i]
        if mode == "work":
            return lambda: work_half(buffer, objs, empties, own, shared)
        if mode == "recv":
            return lambda: receive_half(address, requests, objs, None)

        def both() -> None:
            receive_half(address, requests, objs, lambda o, body: do_work(o, body, own, shared))
            make_empties(empties, own)

        def then() -> None:
            held = memoryview(bytearray(sum(o.end - o.start for o in objs)))
            pos = 0

            def keep(o: Obj, body: memoryview) -> None:
                nonlocal pos
                held[pos : pos + len(body)] = body
                pos += len(body)

            receive_half(address, requests, objs, keep)
            pos = 0
            for o in objs:
                do_work(o, held[pos : pos + o.end - o.start], own, shared)
                pos += o.end - o.start
            make_empties(empties, own)

        return both if mode == "both" else then

    def close(self) -> None:
        """Stop the server, free the buffer, remove the scratch directory."""
        self.server.terminate()
        self.server.wait(timeout=30)
        self.tree.buffer.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


ROWS = {
    "tar": "(1) curl | tar -x (the baseline)",
    "get": "(2) rcds get, whole tree",
    "work": "(3) work floor: SHA-1 + inflate + write, 2 processes",
    "recv": "(4) receive floor: pipelined GETs, bodies discarded, 2 processes",
    "both": "(5) (3) and (4) together, 2 processes",
    "then": "    (4) keeping the bodies, then (3), 2 processes",
    "python": '(6) python -c "import hashlib, deflate"',
    "rcds": "    python -m rcds.cli.main --version",
    "help": "    python -m rcds.cli.main get --help",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--keep", type=Path, default=Path("/var/tmp/s7get-cb"), help="bench/client.py's --keep DIR"
    )
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    ap.add_argument("--out", type=Path, default=Path("/dev/shm"), help="a tmpfs for every output")
    ap.add_argument("--server", choices=["engine", "nginx"], default="engine", help="who serves both routes")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rcds-get-floor-", dir=args.out))
    use_bytecode_cache(scratch / "pycache")  # not in --keep DIR: it is read only here
    print(f"machine: {machine()}", flush=True)
    load0 = os.getloadavg()
    try:
        f = Floor(args.keep, scratch, args.server)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        t = f.tree
        print(
            f"serving {f.url} ({args.server}); {t.files} files ({len(t.empties)} empty), "
            f"{len(t.objs)} objects, "
            f"{len(t.buffer) / MB:.0f} MB stored, {t.plain / MB:.0f} MB plain; loaded and checked in "
            f"{f.load_seconds:.1f} s; halves: "
            + ", ".join(
                f"{len(o)} objects {sum(x.end - x.start for x in o) / MB:.0f} MB" for o, _ in f.split
            ),
            flush=True,
        )
        runs: dict[str, Callable[[], Run]] = {
            "tar": f.tar,
            "get": f.get,
            "work": lambda: f.pair("work"),
            "recv": lambda: f.pair("recv"),
            "both": lambda: f.pair("both"),
            "then": lambda: f.pair("then"),
            "python": lambda: f.startup([sys.executable, "-c", "import hashlib, deflate"]),
            "rcds": lambda: f.startup([sys.executable, "-m", "rcds.cli.main", "--version"]),
            "help": lambda: f.startup([sys.executable, "-m", "rcds.cli.main", "get", "--help"]),
        }
        for name in ("get", "python", "rcds", "help"):  # fills the bytecode cache (not timed)
            runs[name]()
        res: dict[str, list[Run]] = {k: [] for k in runs}
        for rnd in range(args.rounds):
            for name in list(runs) if rnd % 2 == 0 else list(runs)[::-1]:
                res[name].append(runs[name]())
            print(
                f"round {rnd + 1}: "
                + ", ".join(
                    f"{k} {v[-1][0]:.2f} s ({v[-1][1] + v[-1][2]:.2f} CPU-s)" for k, v in res.items()
                ),
                flush=True,
            )
        report(res, f, args, load0)
    finally:
        f.close()


def report(
    res: dict[str, list[Run]],
    f: Floor,
    args: argparse.Namespace,
    load0: tuple[float, ...],
) -> None:
    """The tables and the arithmetic."""
    med = statistics.median

    def m(name: str, i: int) -> float:
        return med(r[i] for r in res[name])

    tar = m("tar", 0)
    rows = []
    for name, label in ROWS.items():
        walls = [r[0] for r in res[name]]
        client, server, system = m(name, 1), m(name, 2), m(name, 3)
        total = med(r[1] + r[2] for r in res[name])
        rows.append(
            [
                label.replace("|", "\\|") if args.markdown else label,
                cell(walls),
                f"{med(walls) / tar:.2f}",
                f"{client:.2f} ({system:.2f})",
                f"{server:.2f}",
                f"{total:.2f}",
            ]
        )
    load1 = os.getloadavg()
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}")
    print(
        f"tree: {f.tree.files} files, {f.tree.plain / MB:.0f} MB, {len(f.tree.objs)} objects; server: "
        f"{args.server}; outputs on {args.out}; {args.rounds} alternating rounds; load average "
        f"{load0[0]:.1f} at start, {load1[0]:.1f} at end"
    )
    headers = ["run", "wall s, median (min)", "vs tar -x", "client CPU s (system)", "server CPU s", "CPU s"]
    print(format_table(headers, rows, markdown=args.markdown))
    steps = f.tree.steps
    print()
    print(
        f"one core, measured while loading: SHA-1 {steps['sha1']:.2f} CPU-s, libdeflate inflate "
        f"{steps['inflate']:.2f}, the Adler-32 re-check rcds does after it {steps['adler32']:.2f} "
        "(not in the floor)"
    )
    start = m("python", 0)
    work_cpu = med(r[1] + r[2] for r in res["work"])
    recv_cpu = med(r[1] + r[2] for r in res["recv"])
    computed = start + (work_cpu + recv_cpu) / 2
    data = min(m("both", 0), m("then", 0))  # the faster way of doing (3) and (4) together
    measured = start + data
    budget = 1.5 * tar
    get = m("get", 0)
    arith = [
        ["aim's budget: 1.5 x tar -x wall", f"1.5 x {tar:.2f}", f"{budget:.2f}", "1.50"],
        [
            "floor from CPU: start-up + (work + receive incl. server) / 2",
            f"{start:.2f} + ({work_cpu:.2f} + {recv_cpu:.2f}) / 2",
            f"{computed:.2f}",
            f"{computed / tar:.2f}",
        ],
        [
            "floor measured: start-up + wall of (5), the faster way",
            f"{start:.2f} + {data:.2f}",
            f"{measured:.2f}",
            f"{measured / tar:.2f}",
        ],
        ["rcds get now", "", f"{get:.2f}", f"{get / tar:.2f}"],
        [
            "left of the budget above the measured floor",
            f"{budget:.2f} - {measured:.2f}",
            f"{budget - measured:.2f}",
            "",
        ],
        ["rcds get now above the measured floor", f"{get:.2f} - {measured:.2f}", f"{get - measured:.2f}", ""],
    ]
    print()
    print(format_table(["the arithmetic (medians)", "from", "s", "vs tar -x"], arith, markdown=args.markdown))
    print()
    left = budget - measured
    print(
        f"floor {measured:.2f} s = {measured / tar:.2f} x tar -x: "
        + (
            f"{left:.2f} s ({left / budget:.0%} of the budget) is left for everything else rcds get does "
            "(manifest, whitelist, catalogs, planning, HTTP parsing, directories and metadata, "
            "Python per object)"
            if left > 0
            else "the floor alone is over the budget: the aim cannot be met on this machine by this design"
        )
    )


if __name__ == "__main__":
    main()
