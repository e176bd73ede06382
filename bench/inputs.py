"""Benchmark inputs: deterministic (seeded) virtualenv-like and compiled-code trees as tarballs, and
a real tree (``pip install --target`` of a few big packages, made once into a cache directory).

Used by ``bench/ingest.py`` and ``bench/client.py``; see the ingest module docstring for what they hold.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import MB, KiB, MiB

MTIME = 1_700_000_000

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


# -- a real tree --------------------------------------------------------------------------------
