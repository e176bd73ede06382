"""Same catalogs as another ``src``: ingest each tarball with this checkout's ``src`` and with
another's (e.g. main's) and compare every catalog row for row.

Each ingest runs in a fresh interpreter into a new repository, at a fixed time, with the default
(zlib 6) or given compression. Every stored catalog is then decompressed and dumped: its schema
objects (``sqlite_master``) and every row of ``catalog``, ``chunks``, ``nested_catalogs``,
``properties`` and ``statistics``, with SQLite's type of each value, sorted (the order of rows
in a table may differ without changing any lookup). The dumps of the ingested (nested) catalog
must be equal; the root catalogs are not compared (they hold the time each new repository was
created)::

    python ingest_catalog_check.py --base-src /tmp/main-src/src venv.tar real.tar \\
        /work/shared/fixtures/stock-cvmfs/*-source.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from abrun import HERE, NEW_SRC, child_command, child_env

NOW = 2_000_000_000
"""Later than the new repository's own creation (a revision is never dated before the previous)."""
TABLES = ("catalog", "chunks", "nested_catalogs", "properties", "statistics")
CHILD = """
import sys
from pathlib import Path
import ingest as B
from rcds.publish.stratum0 import Stratum0
root, tar, compression, now = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
B.new_repository(root, compression)
with open(tar, "rb") as f:
    Stratum0(root, B.REPO).ingest_tar(f, "/sw/x", now=now)
"""


def dump(db_path: Path) -> tuple[str, list[str]]:
    """The catalog's root prefix and its sorted dump lines."""
    db = sqlite3.connect(str(db_path))
    try:
        schema = db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        lines = sorted(f"schema {r[0]}" for r in schema)
        for table in TABLES:
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            select = ", ".join(f"quote({c}), typeof({c})" for c in cols)
            rows = [f"{table} {r!r}" for r in db.execute(f"SELECT {select} FROM {table}")]
            lines += sorted(rows)
        prefix = dict(db.execute("SELECT key, value FROM properties").fetchall()).get("root_prefix", "")
    finally:
        db.close()
    return prefix, lines


def catalogs(root: Path, work: Path) -> dict[str, list[str]]:
    """Every catalog object of a repository, dumped, by root prefix."""
    out: dict[str, list[str]] = {}
    for obj in sorted((root / "public" / "data").glob("??/*C")):
        db = work / "c.db"
        db.write_bytes(zlib.decompress(obj.read_bytes()))
        prefix, lines = dump(db)
        db.unlink()
        if prefix:  # the root catalogs (revisions 1 and 2) differ by the repository's creation time
            out.setdefault(prefix, [])
            out[prefix] += lines
    return out


def ingest(src: Path, tar: Path, compression: str, work: Path) -> dict[str, list[str]]:
    """One ingest with ``src`` first on the path; its catalogs dumped."""
    root = work / "repo"
    try:
        command = child_command(CHILD, str(root), str(tar), compression, str(NOW))
        subprocess.run(command, env=child_env(src), cwd=HERE, check=True)
        return catalogs(root, work)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Compare the catalogs of every tarball; exit 1 on any difference."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-src", type=Path, required=True, help="the baseline's src directory")
    ap.add_argument("--compression", default="zlib:6")
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    ap.add_argument("tars", type=Path, nargs="+")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-catcheck-", dir=args.work))
    failed = False
    try:
        for tar in args.tars:
            base = ingest(args.base_src.resolve(), tar.resolve(), args.compression, work)
            new = ingest(NEW_SRC, tar.resolve(), args.compression, work)
            rows = {p: len(v) for p, v in new.items()}
            digest = hashlib.sha256(json.dumps(new, sort_keys=True).encode()).hexdigest()[:16]
            if base == new:
                print(f"{tar.name}: same catalogs {rows} (dump sha256 {digest})", flush=True)
                continue
            failed = True
            for prefix in sorted(set(base) | set(new)):
                a, b = set(base.get(prefix, [])), set(new.get(prefix, []))
                for line in sorted(a - b)[:5]:
                    print(f"{tar.name} {prefix!r} only base: {line[:200]}")
                for line in sorted(b - a)[:5]:
                    print(f"{tar.name} {prefix!r} only new:  {line[:200]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
