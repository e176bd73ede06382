"""The report of ``bench/ingest.py``: its result rows, the side-by-side table against the baseline
compressor, the verdicts on the issue's aims and the S3-versus-local-disk comparison.

The measuring (inputs, the machine's bound, the ingest in a child process) is in ``ingest.py``;
this module only turns its figures into tables and sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import MB, format_table, mb_per_s

from rcds.format.deflaters import DEFAULT

TARGET_RATIO = 0.7
TARGET_FILES_PER_S = 3000
AIM_DEFAULT_TIME, AIM_DEFAULT_BYTES, AIM_SERVICE_SPEEDUP = 0.5, 1.01, 3.0


@dataclass(slots=True)
class Input:
    """A tarball and what it holds."""

    name: str
    tar: Path
    files: int
    content_bytes: int
    bound_of: str = ""  # for the gzip variant: the input whose bound applies


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
    input: str
    compression: str
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
            f"{f['bytes_written'] / MB:.1f}",
        ]


HEADERS = [
    "input", "files", "MB", "bound MB/s", "ingest MB/s", "ratio", "files/s", "peak RSS MB", "cores",
    "main", "cpu ratio", "others", "new objects", "new MB",
]  # fmt: skip
LEGEND = """\
input LIB:LEVEL: repository objects and the bound both with that compressor.
ratio: ingest MB/s / bound MB/s with the same compressor (wall clock).
cores: CPU seconds of the ingest process and its worker processes / wall seconds.
peak RSS: peak RSS of the ingest process plus the peaks of its worker processes.
main: CPU seconds of the ingest's main thread (tar parsing, chunker, catalog, callbacks) / wall seconds.
cpu ratio: CPU seconds of the bound / CPU seconds of the ingest (less sensitive to other load).
others: CPU seconds used by other processes on the machine during the ingest / wall seconds.
new MB: compressed bytes of the new file and chunk objects.
With --repeat, each row shows the pass whose ingest and bound were least disturbed by others."""


def label(name: str, compression: str, extra: str = "") -> str:
    """A row label: input, compressor of repository and bound, and what else."""
    return f"{name} {compression}" + (f" ({extra})" if extra else "")


def s3_versus_local(rows: dict[str, Row]) -> None:
    for name, s3 in rows.items():
        if "(s3" not in name:
            continue
        local = rows.get(name.replace("(s3, dedup)", "(dedup)").replace(" (s3)", ""))
        if local is not None:
            print(
                f"S3 vs local disk, {name}: {s3.rate:.1f} vs {local.rate:.1f} MB/s,"
                f" {s3.files_per_s:.0f} vs {local.files_per_s:.0f} files/s (ratio {s3.rate / local.rate:.2f})"
            )


SIDE_HEADERS = [
    "input", "compression", "wall s", "CPU s", "repository MB", "compressed/input",
    "wall vs base", "CPU vs base", "bytes vs base",
]  # fmt: skip


def side_by_side(rows: dict[str, Row], inputs: list[Input], compressions: list[str], markdown: bool) -> str:
    """Each setting next to the baseline (the first compressor), per input: time, CPU, size."""
    out = []
    for inp in inputs:
        base = rows.get(label(inp.name, compressions[0]))
        for c in compressions:
            row = rows.get(label(inp.name, c))
            if row is None or base is None:
                continue
            f, bf = row.figures, base.figures
            out.append(
                [
                    inp.name,
                    c,
                    f"{f['seconds']:.2f}",
                    f"{f['cpu_seconds']:.2f}",
                    f"{f['repository_bytes'] / MB:.1f}",
                    f"{f['bytes_written'] / inp.content_bytes:.4f}",
                    f"{f['seconds'] / bf['seconds']:.2f}",
                    f"{f['cpu_seconds'] / bf['cpu_seconds']:.2f}",
                    f"{f['repository_bytes'] / bf['repository_bytes']:.4f}",
                ]
            )
    return (
        f"Side by side with {compressions[0]} (wall and CPU seconds of the first ingest into a fresh"
        " repository; repository MB: every stored object)\n"
        + format_table(SIDE_HEADERS, out, markdown=markdown)
    )


def verdict(rows: dict[str, Row], inputs: list[Input], compressions: list[str]) -> None:
    base_c = compressions[0]
    for inp in inputs:
        base = rows.get(label(inp.name, base_c))
        if base is None or inp.bound_of:
            continue
        for c in compressions[1:]:
            row = rows.get(label(inp.name, c))
            if row is None:
                continue
            t = row.figures["seconds"] / base.figures["seconds"]
            cpu = row.figures["cpu_seconds"] / base.figures["cpu_seconds"]
            size = row.figures["repository_bytes"] / base.figures["repository_bytes"]
            aim = ""
            if c == str(DEFAULT) and base_c == "zlib:6":
                ok = t <= AIM_DEFAULT_TIME and size <= AIM_DEFAULT_BYTES
                aim = (
                    f" (aim <= {AIM_DEFAULT_TIME} of the time at <= {AIM_DEFAULT_BYTES:.2f} the bytes:"
                    f" {'ok' if ok else 'MISSED'})"
                )
            elif c.startswith("isal:") and base_c == "zlib:6":
                ok = 1 / t >= AIM_SERVICE_SPEEDUP
                aim = f" (aim >= {AIM_SERVICE_SPEEDUP:.0f}x faster: {'ok' if ok else 'MISSED'})"
            print(
                f"{inp.name}: {c} takes {t:.2f} of the wall time of {base_c} ({1 / t:.2f}x faster),"
                f" {cpu:.2f} of its CPU, {size:.4f} of its repository bytes{aim}"
            )
    for c in compressions:
        compiled, venv = rows.get(label("compiled", c)), rows.get(label("venv", c))
        if compiled is not None:
            ratio = compiled.ratio or 0.0
            ok = ratio >= TARGET_RATIO
            print(
                f"{c}: large files: ratio {ratio:.2f} (target >= {TARGET_RATIO}) {'ok' if ok else 'MISSED'}"
            )
        if venv is not None:
            ok = venv.files_per_s >= TARGET_FILES_PER_S
            bound_fps = venv.files / venv.nbytes * venv.bound.rate * MB if venv.bound else 0.0
            print(
                f"{c}: small files: {venv.files_per_s:.0f} files/s (target >= {TARGET_FILES_PER_S})"
                f" {'ok' if ok else 'MISSED'}; the bound is {bound_fps:.0f} files/s"
                f" at {venv.nbytes / venv.files / 1000:.1f} KB per file"
            )
    changed = [r for r in rows.values() if r.label.endswith("(changed)")]
    for r in changed:
        print(
            f"{r.input} published again after the compression changed to {r.compression}:"
            f" {r.figures['objects_written']:.0f} new objects,"
            f" {r.figures['bytes_written'] / MB:.1f} MB stored anew"
            " (objects are named by their compressed bytes: no re-use across compressors)"
        )
    a, b = rows.get(label("compiled", base_c)), rows.get(label("compiled-2x", base_c))
    if a is not None and b is not None:
        pa, pb = max(a.peak_kib, a.figures["peak_rss_kib"]), max(b.peak_kib, b.figures["peak_rss_kib"])
        print(
            f"memory ({base_c}): peak RSS {pa / 1024:.0f} MB for {a.nbytes / MB:.0f} MB,"
            f" {pb / 1024:.0f} MB for {b.nbytes / MB:.0f} MB"
            f" (x{pb / pa:.2f} for x{b.nbytes / a.nbytes:.1f} the input; ingest process plus its workers)"
        )
