"""Where an ingest's CPU goes: each stage of ``Stratum0.ingest_tar`` alone, on one core, next to
the whole ingest of the same tarball in the same run.

Run: ``python bench/ingest_parts.py [--tar FILE] [--compressions zlib:6,libdeflate:5,isal:2]``
(default input: the real tree of ``bench/inputs.py``, tarred into a temporary directory).

Stages, each timed alone (wall and CPU seconds of this process; one thread unless said):

* ``tar reading``: :func:`rcds.publish.tarsource.iter_tar` over the tarball, every file's data read
  (header parsing, name policy, buffer copies);
* ``tree + catalog rows``: the same members through :class:`rcds.publish.tree_builder.TreeBuilder`
  into a fresh catalog, with a content writer that stores nothing (tar reading included: subtract
  the line above), then the catalog finalised (counters, VACUUM);
* ``compress LIB:LEVEL``: each file content (8 MiB pieces above 4 MiB) compressed whole;
* ``hash (SHA-1)``: SHA-1 of each compressed object;
* ``object writes``: :meth:`rcds.storage.local.LocalStore.put_if_absent` of each compressed object
  into a fresh store (stat, temp file, write, rename), then one ``syncfs``;
* ``worker start-up``: two object-writing worker processes started until ready, then stopped;
* ``ingest``: the whole ``ingest_tar`` (``bench/ingest.py``'s child) at each setting, CPU of the
  ingest process and its workers: what the stages add up to, spread over both cores.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import MB, format_table, machine
from ingest import _pieces, new_repository, run_ingest
from realtree import default_dir, pip_tree, tar_tree

from rcds.format.catalog_schema import Tally
from rcds.format.deflaters import Compression
from rcds.format.dirent import FLAG_DIR, Dirent
from rcds.format.hashes import Algorithm, ContentHash
from rcds.publish.catalog_rw import WritableCatalog
from rcds.publish.objects import FileContent
from rcds.publish.tarsource import iter_tar
from rcds.publish.tree_builder import TreeBuilder
from rcds.publish.workers import WorkerPool
from rcds.storage.local import LocalStore

_HASH = ContentHash(Algorithm.SHA1, bytes(20))


class NullWriter:
    """A content writer that reads each content and stores nothing (all get one hash)."""

    def add_bytes(self, data: bytes, done: Callable[[FileContent], None]) -> None:
        done(FileContent(len(data), _HASH))

    def add_stream(
        self, read: Callable[[int], bytes], size: int, done: Callable[[FileContent], None], name: str
    ) -> None:
        left = size
        while left > 0:
            left -= len(read(min(left, 1 << 20)))
        done(FileContent(size, _HASH))

    def flush(self) -> None:
        """Nothing is ever pending."""

    def drain(self, wait: bool = False) -> None:
        """Nothing is ever pending."""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def read_tar(tar: Path) -> None:
    with open(tar, "rb") as f:
        for m in iter_tar(f):
            if m.read is not None:
                left = m.size
                while left > 0:
                    left -= len(m.read(min(left, 1 << 20)))


def build_tree(tar: Path, work: Path) -> None:
    db = work / "parts.db"
    db.unlink(missing_ok=True)
    cat = WritableCatalog.create(db, Dirent("/sw/x", "x", stat.S_IFDIR | 0o755, 4096, 0, FLAG_DIR))
    builder = TreeBuilder(cat, NullWriter(), Algorithm.SHA1, 1_700_000_000)  # type: ignore[arg-type]
    with open(tar, "rb") as f:
        for m in iter_tar(f):
            builder.add(m)
    builder.finish()
    cat.finalize(revision=1, previous=None, last_modified=1_700_000_000, subtree=Tally())
    db.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tar", type=Path, help="a plain tarball (default: the real tree, tarred)")
    ap.add_argument("--cache", type=Path, default=default_dir(), help="where the real tree is kept")
    ap.add_argument("--compressions", default="zlib:6,libdeflate:5,isal:2")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    compressions = [Compression.parse(c) for c in args.compressions.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-parts-"))
    try:
        tar = args.tar
        if tar is None:
            tar = work / "real.tar"
            tar_tree(pip_tree(args.cache), tar)
        pieces = list(_pieces(tar))
        nbytes = sum(map(len, pieces))
        print(f"machine: {machine()}")
        print(f"input: {tar} ({len(pieces)} pieces, {nbytes / MB:.0f} MB of content)", flush=True)
        rows: list[list[object]] = []

        def row(stage: str, wall: float, cpu: float, note: str = "") -> None:
            rows.append([stage, f"{wall:.2f}", f"{cpu:.2f}", note])
            print(f"  {stage}: wall {wall:.2f} s, CPU {cpu:.2f} s {note}", flush=True)

        row("tar reading", *timed(lambda: read_tar(tar)))
        row("tree + catalog rows (incl. tar reading)", *timed(lambda: build_tree(tar, work)))
        for c in compressions:
            compress = c.compressor()
            out: list[bytes] = []
            wall, cpu = timed(lambda compress=compress, out=out: out.extend(compress(p) for p in pieces))
            size = sum(map(len, out))
            row(f"compress {c}", wall, cpu, f"({size / nbytes:.4f} of the input)")
        objects = out
        row(
            "hash (SHA-1) of the compressed objects",
            *timed(lambda: [hashlib.sha1(o).digest() for o in objects]),
        )
        store = LocalStore(work / "store", create=True)
        names = [ContentHash(Algorithm.SHA1, hashlib.sha1(o).digest()).object_name() for o in objects]

        def write() -> None:
            for name, o in zip(names, objects, strict=True):
                store.put_if_absent(name, o)
            store.sync()

        row(f"object writes ({len(set(names))} files)", *timed(write))
        row("worker start-up (2 processes)", *timed(lambda: WorkerPool(2).close()))
        for c in compressions:
            root = work / "repo"
            new_repository(root, str(c))
            f = run_ingest(root, tar, "/sw/bench/cid1")
            row(
                f"ingest {c} (all processes)",
                f["seconds"],
                f["cpu_seconds"],
                f"(main thread {f['main_cpu_seconds']:.2f} CPU s)",
            )
            shutil.rmtree(root)
        print()
        print(format_table(["stage", "wall s", "CPU s", ""], rows, markdown=args.markdown))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
