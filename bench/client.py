"""Client read performance, side by side with the tarball route jobs use today, in one run.

Run: ``python bench/client.py [--quick] [--repeat N] [--keep DIR] [--scenarios 1,2,3]
[--outputs tmpfs,disk] [--base-src DIR] [--no-nginx]``.

The input is a real software tree (``--input pip``, the default: ``pip install --target`` of
numpy, scipy, pandas, matplotlib and sympy, ~480 MB in ~13,000 files, made once and kept in
``~/.cache/rcds-bench``, see ``bench/realtree.py``), or the venv-like generated tree of
``bench/ingest.py`` (``--input venv``: ~20k files / ~300 MB; ``--quick`` uses it at 1/10),
published into a fresh repository (SHA-1, zlib -6, 4/8/16 MiB chunks) and served by the engine's
HTTP server on loopback, which also serves ``venv.tar.gz`` (gzip -6) and ``venv.tar``. Scenario 1
is also run against nginx (when installed; ``--no-nginx`` leaves it out), serving that same
directory on loopback with the project's sample replica configuration (``bench/nginx_site.py``),
as a real stratum 1 does: ``rcds get`` and both ``curl | tar`` routes from the same nginx (rows
``(1n)``), beside the rows where both routes are served by the engine's server.
Scenario 1 writes its outputs on a tmpfs (mounted by the bench in its work directory: run it as
root) and on the disk (``--outputs``): file creation on this ext4 moves by +-30% after mass
deletions, a tmpfs does not. ``--base-src DIR`` adds ``rcds get`` of another source tree (e.g.
``git archive main src | tar -x -C DIR``) to scenario 1, interleaved with the others: an A/B in
the same run. Every figure is the wall-clock time of a fresh process, the median of ``--repeat``
runs (min in brackets); the runs of a scenario take turns (rcds, baseline, ...), each after a
``sync``. The timed children (``client_child.py``) import only what they measure. The kernel's
DAMON ``pageout`` evicts pages seconds after their last use, so before each run of scenario 1
the files its server serves are read, not timed (``bench/warm.py``; not with ``--no-warm``).

1. ``rcds get`` of the whole tree into an empty directory with an empty cache, against
   ``curl -s URL | tar -xf -`` (the plain tar) and ``curl -s URL | tar -xzf -``.
2. Reading 10% of the files (a fixed random choice) with an empty cache: ``Repository.prefetch``
   of the list, then ``open`` + ``read`` of each (the target row); also without prefetch, with 8
   threads and sequentially; against the same tarball route (download and extract everything,
   then read them).
3. Reading every file of the tree (sequentially) with a warm cache, against reading the same
   files from a local copy (a directory walk).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from client_child import TREE
from client_runs import CPU, CPU_COLUMNS, SERVER_PID, cell, child, interleaved, timed, use_bytecode_cache
from common import MB, format_table, machine
from nginx_site import start_nginx
from settle import add_settle_argument, remove_tree, settle
from warm import repository_files, warm

REPO = "bench.example.org"
TARGETS = {
    "get/tar": 1.5,
    "get/tgz": 0.5,
    "nginx get/tar": 1.5,
    "nginx get/tgz": 0.5,
    "read10": 0.2,
    "warm": 2.0,
}
"""Scenario 1's targets are on tmpfs outputs (when a tmpfs could be mounted)."""


class Bench:
    """Holds the served repository and the scratch directories."""

    def __init__(self, work: Path, quick: bool, input_kind: str = "pip") -> None:
        self.work = work
        self.quick = quick
        self.input_kind = "venv" if quick else input_kind
        self.n = 0
        self.tmpfs: Path | None = None
        self.use_nginx = True
        self.served: list[Path] = []

    def fresh(self, name: str, base: Path | None = None) -> Path:
        self.n += 1
        p = (base or self.work) / f"{name}-{self.n}"
        shutil.rmtree(p, ignore_errors=True)
        return p

    def discard(self, path: Path) -> None:
        """Put a tree aside; all are deleted at the end (on a tmpfs: deleted now).

        Deleting ~20k files right before the next timed run slows that run's file creation
        (ext4 skips recently freed inodes when allocating, and checking them is not free), so
        no timed run follows a large deletion on disk. A tmpfs frees its memory at once and has
        no such after-effect.
        """
        if self.tmpfs is not None and path.is_relative_to(self.tmpfs):
            shutil.rmtree(path, ignore_errors=True)
            return
        trash = self.work / "trash"
        trash.mkdir(exist_ok=True)
        if path.exists():
            path.rename(trash / f"{path.name}-{time.monotonic_ns()}")

    def mount_tmpfs(self) -> Path | None:
        """A tmpfs in the work directory for scenario 1's outputs (needs root); None if it fails."""
        where = self.work / "tmpfs"
        where.mkdir(exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6g,mode=0755", "rcds-bench", str(where)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"no tmpfs outputs (mount failed: {r.stderr.strip()}); run as root for them", flush=True)
            return None
        self.tmpfs = where
        return where

    def unmount_tmpfs(self) -> None:
        if self.tmpfs is not None:
            subprocess.run(["umount", str(self.tmpfs)], check=False)
            self.tmpfs = None

    def setup(self) -> None:
        import numpy as np

        try:  # here, not at the top: the timed child processes run this file without the generator
            from inputs import gzip_file, plan_venv, write_tar
        except ImportError as exc:  # pragma: no cover - the generator lives next to this file
            raise SystemExit(f"bench/client.py needs the venv generator of bench/ingest.py: {exc}") from exc

        from rcds.publish.create import create_repository
        from rcds.publish.layout import Settings
        from rcds.publish.stratum0 import Stratum0

        scale = 0.1 if self.quick else 1.0
        root = self.work / "repo"
        public = root / "public"
        meta = self.work / "input.json"
        known = json.loads(meta.read_text()) if meta.exists() else None
        reuse = isinstance(known, dict) and known.get("input") == self.input_kind
        if reuse and (public / "venv.tar.gz").exists():
            assert isinstance(known, dict)
            self.files, self.nbytes = known["files"], known["bytes"]  # --keep DIR of an earlier run
            print(
                f"input: {self.input_kind}, {self.files} files, {self.nbytes / MB:.0f} MB "
                f"(reused from {self.work})",
                flush=True,
            )
        else:
            shutil.rmtree(root, ignore_errors=True)
            tar = self.work / "venv.tar"
            t0 = time.perf_counter()
            if self.input_kind == "pip":
                from realtree import pip_tree, tar_tree, tree_size

                tree = pip_tree()
                self.files, self.nbytes = tree_size(tree)
                tar_tree(tree, tar)
            else:
                self.files, self.nbytes = write_tar(tar, plan_venv(np.random.default_rng(11), scale), 11)
            print(
                f"input: {self.input_kind}, {self.files} files, {self.nbytes / MB:.0f} MB "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            create_repository(root, Settings(name=REPO))
            t0 = time.perf_counter()
            with open(tar, "rb") as f:
                Stratum0(root, REPO).ingest_tar(f, TREE)
            print(f"published in {time.perf_counter() - t0:.0f} s", flush=True)
            os.replace(tar, public / "venv.tar")
            gzip_file(public / "venv.tar", public / "venv.tar.gz")
            meta.write_text(json.dumps({"input": self.input_kind, "files": self.files, "bytes": self.nbytes}))
        self.key = str(root / "keys" / f"{REPO}.pub")
        self.server = serve_in_child(public)
        SERVER_PID[:] = [self.server.pid]
        self.url = self.server.stdout.readline().strip()  # type: ignore[union-attr]
        self.nginx: subprocess.Popen[bytes] | None = None
        self.nginx_url: str | None = None
        if self.use_nginx:
            try:
                self.nginx, self.nginx_url = start_nginx(
                    public, REPO, self.work / "nginx", ["venv.tar", "venv.tar.gz"]
                )
            except (OSError, RuntimeError) as exc:
                print(f"no nginx rows: {exc}", flush=True)
            else:
                SERVER_PID.append(self.nginx.pid)
                print(f"nginx serving {self.nginx_url} (the same directory)", flush=True)
        print(
            f"serving {self.url} (venv.tar {os.path.getsize(public / 'venv.tar') / MB:.0f} MB, "
            f"venv.tar.gz {os.path.getsize(public / 'venv.tar.gz') / MB:.0f} MB)",
            flush=True,
        )
        # The regular files of the tree, and a fixed 10% of them.
        from rcds.client.repository import Repository

        with Repository.open_urls([self.url], [self.key], cache_dir=self.fresh("cache"), probe=False) as repo:
            self.all_files = [
                f"{d}/{n}"
                for d, _, names in repo.walk(TREE)
                for n in names
                if repo.lstat(f"{d}/{n}").st_mode & 0o170000 == 0o100000
            ]
        subset = random.Random(7).sample(self.all_files, max(1, len(self.all_files) // 10))
        self.subset_file = self.work / "subset.json"
        self.subset_file.write_text(json.dumps(subset))
        self.subset_local = self.work / "subset-local.json"
        self.subset_local.write_text(json.dumps([p[len(TREE) + 1 :] for p in subset]))

    def rcds_get(
        self,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        base: Path | None = None,
        src: Path | None = None,
        url: str | None = None,
    ) -> float:
        """``rcds get`` of the whole tree into ``base`` (with its cache there too); ``src``: the
        rcds source tree to run (default: the installed one); ``url``: the server (default: the
        engine's)."""
        dest, cache = self.fresh("get", base), self.fresh("cache", base)
        cmd = [
            sys.executable,
            "-m",
            "rcds.cli.main",
            "get",
            "--no-progress",
            "--server",
            url or self.url,
            "--key",
            self.key,
        ]
        cmd += ["--cache", str(cache), *(extra or []), f"{REPO}:{TREE}", str(dest)]
        environ = {**os.environ, **(env or {})}
        if src is not None:
            environ["PYTHONPATH"] = str(src)
        seconds = timed(cmd, stdout=subprocess.DEVNULL, env=environ)
        self.discard(dest)
        self.discard(cache)
        return seconds

    def warm_served(self, run: str) -> None:
        """Read the files the server of scenario 1's run ``run`` serves (see ``bench/warm.py``):
        the tarball of a ``tar``/``tgz`` run, the repository's files of every ``rcds get`` run."""
        public = self.work / "repo" / "public"
        kind = run.removeprefix("nx-")
        if kind in ("tar", "tgz"):
            warm([public / ("venv.tar" if kind == "tar" else "venv.tar.gz")])
            return
        if not self.served:
            self.served = repository_files(public, ("venv.tar", "venv.tar.gz"))
        warm(self.served)

    def tarball(
        self,
        gz: bool,
        then: Callable[[Path], None] | None = None,
        base: Path | None = None,
        url: str | None = None,
    ) -> float:
        dest = self.fresh("tar", base)
        dest.mkdir()
        name, flag = ("venv.tar.gz", "-xzf") if gz else ("venv.tar", "-xf")
        t0 = time.perf_counter()
        subprocess.run(f"curl -sf {url or self.url}/{name} | tar {flag} - -C {dest}", shell=True, check=True)
        if then is not None:
            then(dest)
        seconds = time.perf_counter() - t0
        self.discard(dest)
        return seconds

    def read_subset(self, threads: int) -> float:
        cache = self.fresh("cache")
        f = child("read", self.url, self.key, str(cache), str(self.subset_file), str(threads))
        self.discard(cache)
        return f["wall"]

    def tar_then_subset(self, gz: bool) -> float:
        def read_subset(d: Path) -> None:
            child("local", str(d), str(self.subset_local))

        return self.tarball(gz, read_subset)

    def warm(self) -> tuple[float, float]:
        cache, dest = self.fresh("cache"), self.fresh("local")
        dest.mkdir()
        subprocess.run(f"curl -sf {self.url}/venv.tar | tar -xf - -C {dest}", shell=True, check=True)
        # Fill the cache by reading everything once.
        child("walk", self.url, self.key, str(cache))
        os.sync()  # the copy and the cache are written back before either is timed
        rcds = child("walk", self.url, self.key, str(cache))["wall"]
        local = child("local", str(dest))["wall"]
        self.discard(cache)
        self.discard(dest)
        return rcds, local


def serve_in_child(public: Path) -> subprocess.Popen[str]:
    """The engine's server for ``public`` in a process of its own (a stratum is another machine:
    it must not share this process's GIL); it prints its URL on its first line."""
    code = (
        "import sys; from pathlib import Path; from rcds.serve.http import make_server; "
        f"s = make_server({{{REPO!r}: Path(sys.argv[1])}}); print(s.url_for({REPO!r}), flush=True); "
        "s.serve_forever()"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(public)], stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tree ~10x smaller (smoke run)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--no-sync", action="store_true", help="no sync before each timed run")
    ap.add_argument(
        "--no-warm", action="store_true", help="scenario 1: do not read the served files before each run"
    )
    ap.add_argument("--input", choices=["pip", "venv"], default="pip", help="the tree (see the docstring)")
    ap.add_argument(
        "--outputs",
        type=lambda text: [x for x in text.split(",") if x],
        default=["tmpfs", "disk"],
        metavar="tmpfs,disk",
        help="where scenario 1 writes (default: both)",
    )
    ap.add_argument(
        "--base-src",
        type=Path,
        metavar="DIR",
        help="also run rcds get from this source tree (the directory holding rcds/), e.g. main's",
    )
    ap.add_argument("--no-nginx", action="store_true", help="scenario 1 without the rows served by nginx")
    add_settle_argument(ap)
    ap.add_argument("--no-variants", action="store_true", help="scenario 1 without --fill-cache/one-process")
    ap.add_argument(
        "--scenarios",
        type=lambda text: {int(x) for x in text.split(",")},
        default={1, 2, 3},
        metavar="1,2,3",
        help="which scenarios to run (default: all)",
    )
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="rcds-bench-client-"))
    work.mkdir(parents=True, exist_ok=True)
    base_src = args.base_src.resolve() if args.base_src else None
    use_bytecode_cache(work / "pycache", *([base_src] if base_src else []))
    b = Bench(work, args.quick, args.input)
    b.use_nginx = not args.no_nginx
    try:
        print(f"machine: {machine()}", flush=True)
        load0 = os.getloadavg()
        b.setup()
        if "disk" in args.outputs or args.scenarios - {1}:  # outputs written to disk: let it settle
            settle(work, wait=not args.no_settle)
        r = args.repeat
        rows: list[list[object]] = []
        ratios: dict[str, float] = {}

        med = statistics.median

        def row(label: str, a: list[float], base: list[float], target: str = "") -> list[object]:
            return [label, cell(a), cell(base), f"{med(a) / med(base):.2f}", target]

        cpu_rows: list[list[object]] = []
        if 1 in args.scenarios:
            for where in args.outputs:
                out = b.mount_tmpfs() if where == "tmpfs" else b.work
                if out is None:
                    continue
                runs: dict[str, Callable[[], float]] = {
                    "get": partial(b.rcds_get, base=out),
                    "tar": partial(b.tarball, False, base=out),
                    "tgz": partial(b.tarball, True, base=out),
                }
                if base_src is not None:
                    runs["base"] = partial(b.rcds_get, base=out, src=base_src)
                nx = b.nginx_url
                if nx is not None:
                    runs["nx-get"] = partial(b.rcds_get, base=out, url=nx)
                    runs["nx-tar"] = partial(b.tarball, False, base=out, url=nx)
                    runs["nx-tgz"] = partial(b.tarball, True, base=out, url=nx)
                    if base_src is not None:
                        runs["nx-base"] = partial(b.rcds_get, base=out, src=base_src, url=nx)
                if not args.no_variants and where == args.outputs[0]:
                    runs["fill"] = partial(b.rcds_get, ["--fill-cache"], base=out)
                    runs["one"] = partial(b.rcds_get, env={"RCDS_GET_PROCESSES": "0"}, base=out)
                CPU.clear()
                t = interleaved(r, not args.no_sync, None if args.no_warm else b.warm_served, **runs)
                b.unmount_tmpfs()
                print(f"(1) {where}: {t}", flush=True)
                print(f"(1) {where} CPU s: {CPU}", flush=True)
                cpu_rows.append(
                    [f"(1) {where}", *(f"{med(CPU[k]):.2f}" if k in CPU else "" for k in CPU_COLUMNS)]
                )
                if where == "tmpfs" or "tmpfs" not in args.outputs:
                    ratios["get/tar"] = med(t["get"]) / med(t["tar"])
                    ratios["get/tgz"] = med(t["get"]) / med(t["tgz"])
                rows += [
                    row(f"(1) rcds get, whole tree, {where} vs curl | tar -x", t["get"], t["tar"], "<= 1.5"),
                    row(f"    rcds get, {where} vs curl | tar -xz", t["get"], t["tgz"], "<= 0.5"),
                    row(f"    curl | tar -xz, {where} vs curl | tar -x", t["tgz"], t["tar"]),
                ]
                if "base" in t:
                    rows += [
                        row(f"    rcds get, {where}: this tree vs --base-src", t["get"], t["base"]),
                        row(f"    rcds get of --base-src, {where} vs curl | tar -x", t["base"], t["tar"]),
                    ]
                if "nx-get" in t:
                    rows += [
                        row(
                            f"(1n) nginx: rcds get, {where} vs curl | tar -x",
                            t["nx-get"],
                            t["nx-tar"],
                            "<= 1.5",
                        ),
                        row(
                            f"     nginx: rcds get, {where} vs curl | tar -xz",
                            t["nx-get"],
                            t["nx-tgz"],
                            "<= 0.5",
                        ),
                        row(f"     nginx: curl | tar -x, {where}: nginx vs engine", t["nx-tar"], t["tar"]),
                    ]
                    if "nx-base" in t:
                        rows.append(
                            row(
                                f"     nginx: rcds get, {where}: this tree vs --base-src",
                                t["nx-get"],
                                t["nx-base"],
                            )
                        )
                    if where == "tmpfs" or "tmpfs" not in args.outputs:
                        ratios["nginx get/tar"] = med(t["nx-get"]) / med(t["nx-tar"])
                        ratios["nginx get/tgz"] = med(t["nx-get"]) / med(t["nx-tgz"])
                if "fill" in t:
                    rows += [
                        row(f"    rcds get --fill-cache, {where} vs curl | tar -x", t["fill"], t["tar"]),
                        row(f"    rcds get in one process, {where} vs curl | tar -x", t["one"], t["tar"]),
                    ]
        if 2 in args.scenarios:
            t = interleaved(
                r,
                not args.no_sync,
                prefetch=lambda: b.read_subset(0),
                tarball=lambda: b.tar_then_subset(True),
                threads8=lambda: b.read_subset(8),
                sequential=lambda: b.read_subset(1),
            )
            print(f"(2) {t}", flush=True)
            ratios["read10"] = med(t["prefetch"]) / med(t["tarball"])
            rows += [
                row("(2) read 10% of the files, cold cache, prefetch", t["prefetch"], t["tarball"], "<= 0.2"),
                row("    same without prefetch, 8 threads", t["threads8"], t["tarball"]),
                row("    same without prefetch, one thread", t["sequential"], t["tarball"]),
            ]
        if 3 in args.scenarios:
            warm_rcds, warm_local = [], []
            for _ in range(r):
                a, c = b.warm()
                warm_rcds.append(a)
                warm_local.append(c)
            print(f"(3) warm rcds {warm_rcds} local {warm_local}", flush=True)
            ratios["warm"] = med(warm_rcds) / med(warm_local)
            rows.append(row("(3) read the whole tree, warm cache", warm_rcds, warm_local, "<= 2"))

        print()
        print(f"date: {time.strftime('%Y-%m-%d')}; machine: {machine()}")
        print(
            f"tree ({b.input_kind}): {b.files} files, {b.nbytes / MB:.0f} MB; baseline = curl | tar -x "
            "or -xz from the same server, or a local copy"
        )
        load1 = os.getloadavg()
        print(f"load average: {load0[0]:.1f} at start, {load1[0]:.1f} (15 min: {load1[2]:.1f}) at end")
        headers = ["scenario", "rcds s", "baseline s", "ratio", "target"]
        print(format_table(headers, rows, markdown=args.markdown))
        if cpu_rows:
            print()
            print("CPU seconds per run (client processes + the server; medians), less moved by other load:")
            print(format_table(["scenario", *CPU_COLUMNS], cpu_rows, markdown=args.markdown))
        print()
        for key, ratio in ratios.items():
            target = TARGETS[key]
            ok = ratio <= target
            print(f"{key}: ratio {ratio:.2f} (target <= {target}) {'ok' if ok else 'MISSED'}")
    finally:
        b.unmount_tmpfs()
        if hasattr(b, "server"):
            b.server.terminate()
            b.server.wait()
        if getattr(b, "nginx", None) is not None:
            b.nginx.terminate()
            b.nginx.wait()
        remove_tree(work / "trash")  # recorded: the next file-creating bench waits (bench/settle.py)
        if not args.keep:
            remove_tree(work)


if __name__ == "__main__":
    main()
