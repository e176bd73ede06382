"""Shared test helpers: tar builders, publishing and verification shortcuts, the command line in a
fresh interpreter, polling for a condition (import as ``testkit``)."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import zstandard
from prometheus_client.parser import text_string_to_metric_families

from rcds.format.keys import load_public_key_file
from rcds.publish.stratum0 import Stratum0
from rcds.repo.source import StoreSource
from rcds.repo.verify import VerifyReport, verify_repository

NAME = "test.example.org"
RCDS = [sys.executable, "-m", "rcds.cli.main"]
"""The argv that runs the ``rcds`` command line in a fresh interpreter."""
SMALL_CHUNKS = {"chunk_min": 64 << 10, "chunk_avg": 128 << 10, "chunk_max": 256 << 10}


@dataclass
class Entry:
    """One member for :func:`make_tar`."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file, dir, symlink, hardlink
    target: str = ""
    mode: int = 0o644
    mtime: int = 1_700_000_000


def make_tar(entries: Sequence[Entry], compression: str = "gz") -> bytes:
    """Build a tarball in memory (compression: none, gz, bz2, xz, zst)."""
    buf = io.BytesIO()
    mode = {"none": "w", "gz": "w:gz", "bz2": "w:bz2", "xz": "w:xz", "zst": "w"}[compression]
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mode = e.mode
            ti.mtime = e.mtime
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[
                e.kind
            ]
            ti.linkname = e.target
            tf.addfile(ti)
    data = buf.getvalue()
    if compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    return data


def publish(s0: Stratum0, entries: Sequence[Entry], path: str, **kw: object) -> int:
    """Ingest a gzip tarball of ``entries``; return the new revision."""
    return s0.ingest_tar(io.BytesIO(make_tar(entries)), path, **kw).revision  # type: ignore[arg-type]


def source_of(s0: Stratum0) -> StoreSource:
    """A source reading the served tree through the repository's own store (a directory or S3)."""
    return StoreSource(s0.store, s0.store.location)


def verify(s0: Stratum0) -> VerifyReport:
    """Full verification with the repository's own master key."""
    return verify_repository(source_of(s0), s0.name, [load_public_key_file(s0.layout.key("pub"))])


def rcds(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``rcds ARGS`` in a fresh interpreter (120 s at most) and return its decoded output.

    ``env`` is added to this process's environment; ``stdin`` is the input (else none);
    ``check``: an exit status other than 0 fails the test, with the command's stderr.
    """
    raw = subprocess.run(
        [*RCDS, *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    proc = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    if check and proc.returncode != 0:
        raise AssertionError(f"rcds {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wait_until(cond: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``cond`` every ``step`` seconds until it is truthy (True) or ``timeout`` seconds have
    passed (then its last answer, as a bool)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def load_conftest(folder: str, name: str) -> ModuleType:
    """``tests/<folder>/conftest.py`` as module ``name`` (loaded once), so another test folder
    shares its fixtures and helpers; its own helper modules beside it become importable."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / folder / "conftest.py"
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> MetricSamples:
    """Every sample of a ``/metrics`` page, parsed by Prometheus' own text parser, keyed by
    (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> MetricSamples:
    """:func:`metric_samples` of the page at ``url``."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return metric_samples(resp.read().decode())


def self_signed(directory: Path, stem: str) -> tuple[Path, Path]:
    """A self-signed certificate (common name ``stem``) and its key, as PEM files
    ``<stem>.pem`` and ``<stem>.key`` in ``directory``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    c, k = directory / f"{stem}.pem", directory / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return c, k


def live_children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, found through ``/proc``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
