"""Small revisions (a stamp flush, a tiny publish): the repository key parsed once, side by side
with parsing it for every revision (the former behaviour), in the same run.

Run: ``python bench/small_revisions.py [--revisions N]``. Each revision is ``Stratum0.ingest`` of a
one-file tree into ``/sw/g/<n>`` of a fresh repository at zlib level 1 (as the service's stamp
flushes and small publishes are); the baseline empties the key cache before every revision.
Results and their reading: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from rcds.publish import stratum0
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.members import Kind, Member


def members(n: int) -> list[Member]:
    data = f"revision {n}\n".encode()
    return [Member("a.txt", Kind.FILE, 0o644, 1_900_000_000, size=len(data), read=lambda _k: data)]


def run(root: Path, revisions: int, cached: bool) -> float:
    """Seconds per revision."""
    create_repository(root, Settings(name="bench.example.org", compression_level=1))
    s0 = stratum0.Stratum0(root, "bench.example.org")
    start = time.perf_counter()
    for n in range(revisions):
        if not cached:
            stratum0._KEYS.clear()
        s0.ingest(members(n), f"/sw/g/{n}")
    return (time.perf_counter() - start) / revisions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--revisions", type=int, default=40)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="rcds-bench-") as tmp:
        base = run(Path(tmp) / "parse-every-time", args.revisions, cached=False)
        new = run(Path(tmp) / "parsed-once", args.revisions, cached=True)
    print(f"{'':24} {'ms/revision':>12}")
    print(f"{'key parsed per revision':24} {base * 1000:12.1f}")
    print(f"{'key parsed once':24} {new * 1000:12.1f}")
    print(f"ratio (once / per revision): {new / base:.2f}")


if __name__ == "__main__":
    main()
