"""Stratum-0 tarball ingest throughput, side by side with the machine's bound measured in the same run.

Run: ``python bench/ingest.py [--quick] [--repeat N] [--wait-idle S] [--keep-inputs DIR] [--markdown]``
(see ``--help``; results and their reading are in ``docs/performance.md``).

Inputs are generated deterministically (seeded) as uncompressed tar files, so decompression is not
measured (except in the one ``.tar.gz`` row):

* ``venv``: a Python-virtualenv-like tree, ~20k files / ~300 MB: many small ``.py`` files of
  source-like text (zlib -6 ratio ~3.5; ~1.8 below 2 KB), ``__pycache__/*.pyc``, dist-info metadata, empty
  ``__init__.py`` files, ``.so`` binaries of 100 KB-2 MB with partly random content, symlinks.
* ``compiled``: a compiled-code tree, ~2k files / ~1 GB: object files, sources and headers,
  shared libraries of 2-24 MB and five large files of 50-200 MB (alternating 1 MiB stretches of
  random bytes and of code-like bytes).
* ``compiled-2x``: the compiled tree with twice the members (another seed), to show whether the
  ingest's peak memory grows with the tarball size.

The *bound* is what the machine can do at best on the same bytes: every file content (files above
4 MiB cut in 8 MiB pieces, as the chunker roughly would) compressed with zlib at the repository's
level and the compressed bytes hashed with SHA-1, on two threads with no other work (zlib and
hashlib release the GIL). The *ingest* is ``Stratum0.ingest_tar`` into a fresh repository, timed
end to end (tar parsing, chunking, compression, hashing, object writes, catalog, syncfs, signed
manifest) in a child process whose peak RSS (``VmHWM``) is reported. ``ratio`` is ingest MB/s over
bound MB/s; MB are 10^6 bytes of file content. Extra rows: the same tarball published again at
another path (``dedup``: nothing new to store) and, as a diagnostic, the venv with object
compression stubbed out (zlib level 0), which shows what the rest of the pipeline costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import MB, KiB, MiB, format_table, machine, machine_busy_seconds, mb_per_s, proc_status_kib

REPO = "bench.example.org"
MTIME = 1_700_000_000
CHUNK_THRESHOLD = 4 * MiB  # files above this are chunked by the repository (stock minimum chunk size)
PIECE = 8 * MiB  # the bound cuts such files in pieces of the average chunk size
BOUND_BATCH = 256 * MiB  # the bound holds at most this much input in memory at once
TARGET_RATIO = 0.7
TARGET_FILES_PER_S = 3000

# -- deterministic content ----------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_KEYWORDS = _words(
    "def class return self if else elif for in while import from as with try except finally raise "
    "pass None True False and or not is lambda yield assert async await global "
)
_SYLLABLES = _words(
    "get set data value name path config result item key index node buffer stream request response "
    "handler error message args kwargs options parser token field model user cache file size count "
    "list dict type state context module object info func param check load save read write open "
    "close update create delete build parse format init run start stop to from is has max min len "
    "str int array frame series plot axis dtype shape tensor layer grad loss batch query session "
    "table column "
)
_PUNCT = [
    "(", ")", ":", ",", ".", " = ", " == ", "[", "]", "\n", "\n    ", "\n        ", "\n            ",
    " + ", " - ", "'", '"', "  # ", "0", "1", "2", "{", "}", " -> ", "\n\n", '"""',
]  # fmt: skip
_HEADER = (
    b"# Copyright (c) the project authors.\n# SPDX-License-Identifier: BSD-3-Clause\n"
    b'"""Generated module for the ingest benchmark."""\n\nfrom __future__ import annotations\n\n'
)


class Content:
    """Byte generators of realistic compressibility, all driven by one seeded generator."""

    TEXT_POOL = 16 * MiB

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = self._text_pool(self.TEXT_POOL)
        self.words = self.rng.integers(0, 1 << 32, 4096, dtype=np.uint32)  # "instructions"
        q = (np.arange(1 << 16) + 0.5) / (1 << 16)
        self.skew = np.minimum(-np.log1p(-q) * 300, 4095).astype(np.uint16)  # few frequent, long tail

    def _text_pool(self, size: int) -> bytes:
        """Pseudo Python source with the locality of real code.

        A global set of lines (2-13 Zipf-distributed tokens: identifiers, keywords, punctuation)
        is drawn from in stretches of ~400 lines that mostly reuse a small local subset, as
        a module reuses its own names and idioms, with indentation. zlib -6 compresses it ~3.5x,
        at about the speed it compresses real Python sources (these compress ~4.4x).
        """
        rng = self.rng
        idents = []
        for _ in range(3000):
            parts = [_SYLLABLES[j] for j in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4)))]
            idents.append("_".join(parts) if rng.random() < 0.8 else "".join(p.capitalize() for p in parts))
        vocab = np.array(_PUNCT + _KEYWORDS + idents, dtype=object)
        weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
        weights /= weights.sum()
        n_lines, local, fresh = 50_000, 120, 0.35
        lengths = rng.integers(2, 14, n_lines)
        idx = rng.choice(len(vocab), size=int(lengths.sum()), p=weights)
        tokens = (vocab[idx] + np.where(rng.random(len(idx)) < 0.6, " ", "")).tolist()
        ends = np.cumsum(lengths).tolist()
        lines = np.array(["".join(tokens[e - k : e]) for e, k in zip(ends, lengths.tolist(), strict=True)])
        lines = lines.astype(object)
        indent = np.array(["", "    ", "        ", "            "], dtype=object)
        out = bytearray()
        while len(out) < size:
            subset = rng.integers(0, n_lines, local)
            pick = subset[np.minimum(rng.geometric(3 / local, 400) - 1, local - 1)]
            new = rng.random(400) < fresh
            pick[new] = rng.integers(0, n_lines, int(new.sum()))
            ind = indent[rng.choice(4, 400, p=[0.2, 0.4, 0.3, 0.1])]
            out += ("\n".join((ind + lines[pick]).tolist()) + "\n\n").encode()
        return bytes(out[:size])

    def text(self, n: int, header: bool = False) -> bytes:
        """``n`` bytes of source-like text from the pool (at a random offset)."""
        head = _HEADER[:n] if header else b""
        n -= len(head)
        parts = [head]
        while n > 0:
            take = min(n, len(self.pool) // 2)
            o = int(self.rng.integers(0, len(self.pool) - take + 1))
            parts.append(self.pool[o : o + take])
            n -= take
        return b"".join(parts)

    def random(self, n: int) -> bytes:
        """Incompressible bytes (packed data, already compressed resources)."""
        return self.rng.bytes(n)

    def code(self, n: int) -> bytes:
        """Machine-code-like bytes: 4-byte words from a skewed table (zlib -6 ratio ~2)."""
        u = np.frombuffer(self.rng.bytes((n + 3) // 4 * 2), dtype=np.uint16)
        return bytes(np.take(self.words, self.skew[u]).tobytes()[:n])

    def binary(self, n: int, random_frac: float) -> bytes:
        """An object-file-like mix: code, string tables, zero padding and ``random_frac`` random data."""
        parts = [b"\x7fELF\x02\x01\x01\x00" + bytes(56)]
        left = n - len(parts[0])
        kinds = ("code", "text", "zero", "random")
        rest = 1 - random_frac
        p = np.array([0.65 * rest, 0.25 * rest, 0.10 * rest, random_frac])
        while left > 0:
            seg = min(left, int(self.rng.integers(4 * KiB, 96 * KiB)))
            kind = kinds[int(self.rng.choice(4, p=p))]
            if kind == "code":
                parts.append(self.code(seg))
            elif kind == "text":
                parts.append(self.text(seg))
            elif kind == "zero":
                parts.append(bytes(seg))
            else:
                parts.append(self.random(seg))
            left -= seg
        return b"".join(parts)[:n]

    def large(self, n: int) -> bytes:
        """A large binary: alternating 1 MiB stretches of random and of code-like bytes (half each)."""
        out = bytearray()
        i = 0
        while len(out) < n:
            seg = min(MiB, n - len(out))
            out += self.random(seg) if i % 2 else self.code(seg)
            i += 1
        return bytes(out)

    def make(self, kind: str, n: int) -> bytes:
        """Content of a planned file."""
        if n == 0:
            return b""
        if kind == "py":
            return self.text(n, header=True)
        if kind == "text":
            return self.text(n)
        if kind == "pyc":
            return self.binary(n, 0.05)
        if kind == "so":
            return self.binary(n, 0.20)
        if kind == "obj":
            return self.binary(n, 0.15)
        if kind == "large":
            return self.large(n)
        raise ValueError(kind)


# -- input trees --------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """A planned tar member: a file (``kind`` says which content), or a symlink (``link``)."""

    path: str
    kind: str
    size: int = 0
    link: str = ""


def _name(rng: np.random.Generator, parts: int = 2) -> str:
    return "_".join(_SYLLABLES[j] for j in rng.integers(0, len(_SYLLABLES), parts))


def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _rescale(entries: list[Entry], kinds: set[str], target: int) -> None:
    """Scale the sizes of ``kinds`` so that the whole tree holds about ``target`` bytes."""
    fixed = sum(e.size for e in entries if e.kind not in kinds)
    scalable = sum(e.size for e in entries if e.kind in kinds)
    if scalable <= 0:
        return
    f = max(0.05, (target - fixed) / scalable)
    for e in entries:
        if e.kind in kinds and e.size > 0:
            e.size = max(16, int(e.size * f))


def plan_venv(rng: np.random.Generator, scale: float) -> list[Entry]:
    """A virtualenv-like tree: ~20k files / ~300 MB at scale 1."""
    sp = "lib/python3.11/site-packages"
    out: list[Entry] = [
        Entry("pyvenv.cfg", "text", 200),
        Entry("bin/python3.11", "so", 300 * KiB),
        Entry("bin/python3", "link", link="python3.11"),
        Entry("bin/python", "link", link="python3.11"),
        Entry("lib64", "link", link="lib"),
    ]
    out += [Entry(f"bin/{_name(rng, 1)}-{i}", "text", 300) for i in range(int(40 * scale) + 1)]
    n_pkgs = max(8, int(160 * scale))
    n_modules = int(11_500 * scale)
    n_so = max(4, int(150 * scale))
    shares = 1.0 / np.arange(1, n_pkgs + 1) ** 1.1
    modules = rng.multinomial(n_modules, shares / shares.sum())
    sos = rng.multinomial(n_so, shares / shares.sum())
    for p in range(n_pkgs):
        pkg = f"{_name(rng)}{p}"
        dist = f"{sp}/{pkg}-{rng.integers(0, 30)}.{rng.integers(0, 20)}.{rng.integers(0, 9)}.dist-info"
        record = 100 * int(modules[p]) + 200
        for fname, size in (("METADATA", 8 * KiB), ("RECORD", record), ("LICENSE", 4 * KiB)):
            out.append(Entry(f"{dist}/{fname}", "text", size))
        for fname in ("WHEEL", "INSTALLER", "top_level.txt"):
            out.append(Entry(f"{dist}/{fname}", "text", 100))
        dirs = [f"{sp}/{pkg}"]
        for _ in range(int(modules[p]) // 12):
            dirs.append(f"{dirs[int(rng.integers(0, len(dirs)))]}/{_name(rng, 1)}{len(dirs)}")
        for d in dirs:
            init_size = 0 if rng.random() < 0.5 else int(_loguniform(rng, 200, 8 * KiB, 1)[0])
            out.append(Entry(f"{d}/__init__.py", "py", init_size))
        cached = rng.random() < 0.5  # about half the packages ship __pycache__
        sizes = np.clip(rng.lognormal(np.log(5 * KiB), 1.0, int(modules[p])), 200, 300 * KiB)
        for i, size in enumerate(sizes):
            d = dirs[int(rng.integers(0, len(dirs)))]
            mod = f"{_name(rng)}_{i}"
            out.append(Entry(f"{d}/{mod}.py", "py", int(size)))
            if cached:
                out.append(Entry(f"{d}/__pycache__/{mod}.cpython-311.pyc", "pyc", int(size * 0.8)))
        for i, size in enumerate(_loguniform(rng, 100 * KiB, 2 * MiB, int(sos[p]))):
            d = dirs[int(rng.integers(0, len(dirs)))]
            out.append(Entry(f"{d}/_{_name(rng, 1)}{i}.cpython-311-x86_64-linux-gnu.so", "so", int(size)))
    _rescale(out, {"py", "pyc", "text"}, int(300 * MB * scale))
    return out


def plan_compiled(rng: np.random.Generator, scale: float, copies: int = 1) -> list[Entry]:
    """A compiled-code tree: ~2k files / ~1 GB at scale 1, with five files of 50-200 MB.

    ``scale`` shrinks member counts and the large files alike; ``copies`` multiplies the member
    counts (the large files included) at the same file sizes.
    """
    out: list[Entry] = []
    for rep in range(copies):
        for i, mb in enumerate((200, 150, 100, 75, 50)):
            out.append(Entry(f"lib/libbig{rep}_{i}.so.{i + 1}.0", "large", int(mb * MB * scale)))
            out.append(Entry(f"lib/libbig{rep}_{i}.so", "link", link=f"libbig{rep}_{i}.so.{i + 1}.0"))
    n = scale * copies
    modules = [f"{_name(rng, 1)}{i}" for i in range(max(4, int(40 * n)))]
    for i, size in enumerate(_loguniform(rng, 2 * MiB, 24 * MiB, int(32 * n) + 1)):
        out.append(Entry(f"lib/lib{_name(rng, 1)}{i}.so.1", "so", int(size)))
    for i, size in enumerate(_loguniform(rng, 8 * KiB, 1 * MiB, int(1400 * n))):
        m = modules[int(rng.integers(0, len(modules)))]
        out.append(Entry(f"build/{m}/CMakeFiles/{m}.dir/{_name(rng)}{i}.cpp.o", "obj", int(size)))
    for i, size in enumerate(_loguniform(rng, 1 * KiB, 60 * KiB, int(520 * n))):
        m = modules[int(rng.integers(0, len(modules)))]
        ext = ".h" if i % 2 else ".cpp"
        out.append(Entry(f"{'include' if i % 2 else 'src'}/{m}/{_name(rng)}{i}{ext}", "text", int(size)))
    for i in range(max(2, int(30 * n))):
        out.append(Entry(f"bin/{_name(rng, 1)}{i}", "obj", int(_loguniform(rng, 50 * KiB, 3 * MiB, 1)[0])))
    large = sum(e.size for e in out if e.kind == "large")
    _rescale(out, {"so", "obj", "text"}, large + int(425 * MB * n))
    return out


@dataclass(slots=True)
class Input:
    """A generated tarball and what it holds."""

    name: str
    tar: Path
    files: int
    content_bytes: int
    bound_of: str = ""  # for the gzip variant: the input whose bound applies


def write_tar(path: Path, entries: list[Entry], seed: int) -> tuple[int, int]:
    """Write the planned tree as a plain tar; return (files, content bytes)."""
    content = Content(seed)
    dirs: set[str] = set()
    files = nbytes = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:

        def add_dirs(p: str) -> None:
            parent = p.rpartition("/")[0]
            if parent and parent not in dirs:
                add_dirs(parent)
                ti = tarfile.TarInfo(parent)
                ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = tarfile.DIRTYPE, 0o755, MTIME, 1000, 1000
                tf.addfile(ti)
                dirs.add(parent)

        for e in entries:
            add_dirs(e.path)
            ti = tarfile.TarInfo(e.path)
            ti.mtime, ti.uid, ti.gid = MTIME, 1000, 1000
            if e.kind == "link":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e.link, 0o777
                tf.addfile(ti)
                continue
            data = content.make(e.kind, e.size)
            ti.size = len(data)
            ti.mode = 0o755 if e.kind in ("so", "large") or e.path.startswith("bin/") else 0o644
            tf.addfile(ti, io.BytesIO(data))
            files += 1
            nbytes += len(data)
    return files, nbytes


def gzip_file(src: Path, dst: Path, level: int = 6) -> None:
    """``gzip -<level>`` of a file, streaming."""
    with open(src, "rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=level, mtime=0) as fout:
        shutil.copyfileobj(fin, fout, MiB)


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


def _work(pieces: list[bytes], level: int) -> int:
    stored = 0
    for p in pieces:
        z = zlib.compress(p, level)
        hashlib.sha1(z).digest()
        stored += len(z)
    return stored


@dataclass(slots=True)
class Bound:
    """The bound's measurement over one input."""

    seconds: float
    cpu_seconds: float
    nbytes: int
    compressed_fraction: float
    other_cpu_seconds: float  # used by other processes meanwhile

    @property
    def rate(self) -> float:
        """MB/s of uncompressed input."""
        return mb_per_s(self.nbytes, self.seconds)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bound(tar: Path, level: int, threads: int = 2) -> Bound:
    """zlib + SHA-1 over the tar's file contents, on ``threads`` threads.

    Pieces are read ahead in batches (reading is not timed), each batch split between the threads
    by size (largest first onto the least loaded thread) so that both cores stay busy.
    """
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
            stored = sum(fut.result() for fut in [pool.submit(_work, lane, level) for lane in lanes])
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


def child_ingest(root: str, tar: str, path: str, level: str) -> None:
    """Ingest ``tar`` at ``path`` of the repository at ``root``; print figures as JSON.

    ``level`` other than ``repo`` overrides the zlib level of object compression (a diagnostic:
    ``0`` stores deflate blocks uncompressed, which leaves the cost of everything else).
    """
    from rcds.format.compression import StoredObject, make_object
    from rcds.format.hashes import Algorithm
    from rcds.publish import objects
    from rcds.publish.stratum0 import Stratum0

    if level != "repo":

        def patched(data: bytes, algorithm: Algorithm, _level: int = 6) -> StoredObject:
            return make_object(data, algorithm, int(level))

        vars(objects)["make_object"] = patched  # ContentWriter._store looks it up at call time

    s0 = Stratum0(Path(root), REPO)
    rss0 = proc_status_kib("VmRSS")
    b0, c0, m0, t0 = machine_busy_seconds(), _cpu(), time.thread_time(), time.perf_counter()
    with open(tar, "rb") as f:
        result = s0.ingest_tar(f, path)
    seconds = time.perf_counter() - t0
    cpu = _cpu() - c0
    figures = {
        "seconds": seconds,
        "engine_seconds": result.seconds,
        "cpu_seconds": cpu,
        "other_cpu_seconds": max(0.0, machine_busy_seconds() - b0 - cpu),
        "main_cpu_seconds": time.thread_time() - m0,
        "files": result.stats.files,
        "bytes_in": result.stats.bytes_in,
        "objects_written": result.stats.objects_written,
        "bytes_written": result.stats.bytes_written,
        "rss_before_kib": rss0,
        "peak_rss_kib": proc_status_kib("VmHWM"),
    }
    print(json.dumps(figures))


def run_ingest(root: Path, tar: Path, path: str, level: str = "repo") -> dict[str, float]:
    """One ingest in a fresh interpreter (so that its peak RSS is its own)."""
    os.sync()  # write back the inputs and earlier repositories first: the ingest's syncfs is its own
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(tar), path, level],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def new_repository(root: Path) -> None:
    """A fresh repository with default settings (4/8/16 MiB chunks, zlib -6, SHA-1)."""
    from rcds.publish.create import create_repository
    from rcds.publish.layout import Settings

    shutil.rmtree(root, ignore_errors=True)
    create_repository(root, Settings(name=REPO))


# -- main ---------------------------------------------------------------------------------------


def _contention(b: Bound | None, figures: dict[str, float]) -> float:
    """Cores used by other processes during the ingest plus during its bound."""
    other = figures["other_cpu_seconds"] / figures["seconds"]
    return other + (b.other_cpu_seconds / b.seconds if b is not None else 0.0)


@dataclass(slots=True)
class Row:
    """One line of the result table: of the repeats, the pass least disturbed by other processes.

    The bound and the ingest of a row always come from the same pass (measured one right after
    the other), so that both saw about the same machine.
    """

    label: str
    files: int
    nbytes: int
    bound: Bound | None
    figures: dict[str, float]
    peak_kib: float = 0

    def add_pass(self, b: Bound | None, figures: dict[str, float]) -> None:
        self.peak_kib = max(self.peak_kib, figures["peak_rss_kib"], self.figures["peak_rss_kib"])
        if _contention(b, figures) < _contention(self.bound, self.figures):
            self.bound, self.figures = b, figures

    @property
    def rate(self) -> float:
        return mb_per_s(self.nbytes, self.figures["seconds"])

    @property
    def files_per_s(self) -> float:
        return self.files / self.figures["seconds"]

    @property
    def ratio(self) -> float | None:
        return self.rate / self.bound.rate if self.bound else None

    def cells(self) -> list[object]:
        f = self.figures
        ratio = self.ratio
        cpu_ratio = self.bound.cpu_seconds / f["cpu_seconds"] if self.bound else None
        return [
            self.label,
            self.files,
            f"{self.nbytes / MB:.0f}",
            f"{self.bound.rate:.1f}" if self.bound else "-",
            f"{self.rate:.1f}",
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{self.files_per_s:.0f}",
            f"{max(self.peak_kib, f['peak_rss_kib']) / 1024:.0f}",
            f"{f['cpu_seconds'] / f['seconds']:.2f}",
            f"{f['main_cpu_seconds'] / f['seconds']:.2f}",
            f"{cpu_ratio:.2f}" if cpu_ratio is not None else "-",
            f"{f['other_cpu_seconds'] / f['seconds']:.2f}",
            int(f["objects_written"]),
        ]


HEADERS = [
    "input", "files", "MB", "bound MB/s", "ingest MB/s", "ratio", "files/s", "peak RSS MB", "cores",
    "main", "cpu ratio", "others", "new objects",
]  # fmt: skip
LEGEND = """\
ratio: ingest MB/s / bound MB/s (wall clock). cores: CPU seconds of the ingest process / wall seconds.
main: CPU seconds of the ingest's main thread (tar parsing, chunker, catalog, callbacks) / wall seconds.
cpu ratio: CPU seconds of the bound / CPU seconds of the ingest (less sensitive to other load).
others: CPU seconds used by other processes on the machine during the ingest / wall seconds.
With --repeat, each row shows the pass whose ingest and bound were least disturbed by others."""


def generate(work: Path, quick: bool, gz: bool, large: bool) -> list[Input]:
    """Write the inputs under ``work``."""
    s = 0.1 if quick else 1.0
    plans: list[tuple[str, int, Callable[[np.random.Generator], list[Entry]]]] = [
        ("venv", 11, lambda rng: plan_venv(rng, s)),
        ("compiled", 21, lambda rng: plan_compiled(rng, s)),
    ]
    if large:
        plans.append(("compiled-2x", 22, lambda rng: plan_compiled(rng, s, copies=2)))
    inputs = []
    for name, seed, plan in plans:
        t0 = time.perf_counter()
        tar = work / f"{name}.tar"
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


def wait_idle(limit: float, threshold: float = 0.3, window: float = 3.0) -> None:
    """Wait (at most ``limit`` seconds) until other processes use less than ``threshold`` cores."""
    deadline = time.monotonic() + limit
    other = 0.0
    while time.monotonic() < deadline:
        b0 = machine_busy_seconds()
        time.sleep(window)
        other = (machine_busy_seconds() - b0) / window
        if other < threshold:
            return
    if limit > 0:
        print(f"  (the machine stayed busy: other processes use {other:.1f} cores; measuring anyway)")


def measure(
    inputs: list[Input], tmp: Path, level: int, diag: bool, idle: float, rows: dict[str, Row]
) -> None:
    """One pass: per input its bound, then its ingests right after (so both see the same load)."""
    bounds: dict[str, Bound] = {}

    def ingest(root: Path, inp: Input, path: str, level: str = "repo") -> dict[str, float]:
        wait_idle(idle)
        return run_ingest(root, inp.tar, path, level)

    def record(label: str, inp: Input, b: Bound | None, figures: dict[str, float]) -> None:
        extra = "" if b is None else f" (bound {b.rate:.1f} MB/s, {b.cpu_seconds:.1f} CPU-s)"
        print(f"  ingest {label}: {json.dumps(figures)}{extra}", flush=True)
        row = rows.get(label)
        if row is None:
            rows[label] = Row(label, inp.files, inp.content_bytes, b, figures)
        else:
            row.add_pass(b, figures)

    for inp in inputs:
        if inp.bound_of:
            b = bounds[inp.bound_of]
        else:
            wait_idle(idle)
            b = bounds[inp.name] = bound(inp.tar, level)
            print(
                f"  bound {inp.name}: {b.rate:.1f} MB/s over {b.nbytes / MB:.0f} MB,"
                f" {b.cpu_seconds:.1f} CPU-s ({b.cpu_seconds / b.seconds:.2f} cores,"
                f" others {b.other_cpu_seconds / b.seconds:.2f};"
                f" zlib -{level} + SHA-1, 2 threads;"
                f" compressed/input {b.compressed_fraction:.2f})",
                flush=True,
            )
        root = tmp / "repo"
        new_repository(root)
        record(inp.name, inp, b, ingest(root, inp, "/sw/bench/cid1"))
        if inp.name in ("venv", "compiled"):
            record(f"{inp.name} (dedup)", inp, b, ingest(root, inp, "/sw/bench/cid2"))
        if diag and inp.name == "venv":
            new_repository(root)
            record("venv (diag: zlib -0)", inp, None, ingest(root, inp, "/sw/bench/cid1", "0"))
        shutil.rmtree(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="inputs ~10x smaller (smoke run)")
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
    ap.add_argument("--no-gzip", action="store_true", help="skip the .tar.gz row")
    ap.add_argument("--no-large", action="store_true", help="skip the 2x compiled input (memory flatness)")
    ap.add_argument("--no-diag", action="store_true", help="skip the diagnostic zlib -0 ingest row")
    ap.add_argument("--level", type=int, default=6, help="zlib level of the bound (the repository's: 6)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--child", nargs=4, metavar=("ROOT", "TAR", "PATH", "LEVEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_ingest(*args.child)
        return

    tmp = Path(tempfile.mkdtemp(prefix="rcds-bench-ingest-"))
    try:
        inputs_dir = args.keep_inputs or tmp / "inputs"
        inputs_dir.mkdir(parents=True, exist_ok=True)
        print(f"machine: {machine()}")
        print(f"generating inputs in {inputs_dir}{' (quick)' if args.quick else ''}", flush=True)
        inputs = generate(inputs_dir, args.quick, not args.no_gzip, not args.no_large)
        rows: dict[str, Row] = {}
        load0 = os.getloadavg()[0]
        for i in range(args.repeat):
            print(f"pass {i + 1}/{args.repeat}", flush=True)
            measure(inputs, tmp, args.level, not args.no_diag, args.wait_idle, rows)
        load1 = os.getloadavg()[0]
        print()
        print(f"date: {time.strftime('%Y-%m-%d')}; machine: {machine()}")
        print(f"load average (1 min) before/after: {load0:.2f}/{load1:.2f}; passes: {args.repeat}")
        print(format_table(HEADERS, [r.cells() for r in rows.values()], markdown=args.markdown))
        print(LEGEND)
        print()
        _verdict(rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verdict(rows: dict[str, Row]) -> None:
    if "compiled" in rows:
        ratio = rows["compiled"].ratio or 0.0
        ok = ratio >= TARGET_RATIO
        print(f"large files: ratio {ratio:.2f} (target >= {TARGET_RATIO}) {'ok' if ok else 'MISSED'}")
    if "venv" in rows:
        r = rows["venv"]
        ok = r.files_per_s >= TARGET_FILES_PER_S
        bound_fps = r.files / r.nbytes * r.bound.rate * MB if r.bound else 0.0
        print(
            f"small files: {r.files_per_s:.0f} files/s (target >= {TARGET_FILES_PER_S})"
            f" {'ok' if ok else 'MISSED'};"
            f" the bound itself is {bound_fps:.0f} files/s at {r.nbytes / r.files / 1000:.1f} KB per file"
        )
    if "venv (diag: zlib -0)" in rows:
        print(f"small files, compression stubbed out: {rows['venv (diag: zlib -0)'].files_per_s:.0f} files/s")
    if "compiled" in rows and "compiled-2x" in rows:
        a, b = rows["compiled"], rows["compiled-2x"]
        pa, pb = max(a.peak_kib, a.figures["peak_rss_kib"]), max(b.peak_kib, b.figures["peak_rss_kib"])
        print(
            f"memory: peak RSS {pa / 1024:.0f} MB for {a.nbytes / MB:.0f} MB,"
            f" {pb / 1024:.0f} MB for {b.nbytes / MB:.0f} MB"
            f" (x{pb / pa:.2f} for x{b.nbytes / a.nbytes:.1f} the input)"
        )


if __name__ == "__main__":
    main()
