"""A/B of the service's publish latency: the same tarball published by one ``rcds`` src or another.

Run: ``python bench/service_ab.py --base-src /tmp/me-main/src [--rounds 3] [--size 100]``.

The tarball of ``bench/service.py`` (``--size`` MB, seed 100: the one ``service.py --sizes 100``
publishes) is generated once. Each round then runs, for the base src and this checkout's in
turn (:mod:`abrun`), a child process that starts a fresh service (:func:`service.start_service`,
its own base directory), uploads the tarball to it from a grandchild and waits for PRESENT
(:func:`service.publish_one`), and prints the times: upload end -> PRESENT and its ingest and sign
stages, the CPU seconds of the service and its worker processes and those of its busiest thread
(the publish's serial path): on a loaded machine the CPU figures are the ones to compare. The
medians of each src are printed side by side, with their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from abrun import rounds, run_child
from common import format_table, machine

FIELDS = ("to_present", "ingest", "sign", "upload", "cpu", "thread_cpu")
"""The figures compared, as named in :class:`service.Latency`."""


def child(spec_json: str) -> None:
    """In the child: a fresh service publishes the tarball once; print its Latency as JSON."""
    import service

    spec = json.loads(spec_json)
    base = Path(spec["base"])
    st = service.start_service(base)
    try:
        row = service.publish_one(st, Path(spec["path"]), spec["raw"], spec["cid"], spec["label"])
    finally:
        st.stop()  # its directory is deleted at the end (a deletion would slow the next run's writes)
    print(json.dumps(dataclasses.asdict(row)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-src", type=Path, required=True, help="the baseline's src directory")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs, base and new alternating (3)")
    ap.add_argument("--size", type=int, default=100, help="tarball size in MB (100)")
    ap.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    ap.add_argument("--keep", type=Path, help="keep the tarball in this directory and reuse it from there")
    args = ap.parse_args()

    print(f"# service A/B: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-service-ab-", dir="/tmp"))
    try:
        path, raw, cid = tarball(args.keep or work, args.size)
        results: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
        rows = []
        for rnd, name, src in ab_order(args.rounds, args.base_src):
            spec = {"base": str(work / f"srv-{name}-{rnd}"), "path": str(path), "raw": raw, "cid": cid}
            spec["label"] = f"{args.size} MB"
            load = os.getloadavg()[0]
            out = run_child(src, "import sys, service_ab; service_ab.child(sys.argv[1])", json.dumps(spec))
            r = json.loads(out.strip().splitlines()[-1])
            r["load"] = load
            results[name].append(r)
            rows.append([rnd, name, f"{load:.1f}", *(f"{r[f]:.2f}" for f in FIELDS)])
            print(
                f"  round {rnd} {name}: "
                + " ".join(f"{f} {r[f]:.2f}" for f in FIELDS)
                + f" (load {load:.1f})",
                flush=True,
            )
        print()
        print(format_table(["round", "src", "load", *FIELDS], rows, args.markdown))
        med = {n: {f: statistics.median(r[f] for r in runs) for f in FIELDS} for n, runs in results.items()}
        summary = [[f, f"{med['base'][f]:.2f}", f"{med['new'][f]:.2f}", _ratio(med, f)] for f in FIELDS]
        print()
        print(format_table(["median s", "base", "new", "new/base"], summary, args.markdown))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tarball(where: Path, size: int) -> tuple[Path, int, str]:
    """The tarball of ``size`` MB in ``where`` (generated unless a previous run kept it there):
    its path, unpacked size and CID."""
    import service

    about = where / f"code-{size}MB.json"
    if about.exists():
        known = json.loads(about.read_text())
        return Path(known["path"]), known["raw"], known["cid"]
    where.mkdir(parents=True, exist_ok=True)
    path, raw, cid = service.make_tarball(where, size, seed=100)
    about.write_text(json.dumps({"path": str(path), "raw": raw, "cid": cid}))
    return path, raw, cid


def ab_order(count: int, base_src: Path) -> list[tuple[int, str, Path]]:
    """(round, name, src): base then new in odd rounds, new then base in even ones, so that
    neither always runs right after the other."""
    runs = list(rounds(count, base_src))
    for i in range(2, len(runs), 4):
        runs[i], runs[i + 1] = runs[i + 1], runs[i]
    return runs


def _ratio(med: dict[str, dict[str, float]], field: str) -> str:
    base = med["base"][field]
    return f"{med['new'][field] / base:.2f}" if base else "-"


if __name__ == "__main__":
    sys.exit(main())
