"""The loop of a ``rcds get`` worker (:func:`rcds.client.get.worker.run_batch`), in this process,
against real servers: every object verified, every target written, a stop request honoured."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.fetch.bulk import BULK_MAX_OBJECT
from rcds.client.get import worker as getworker
from rcds.client.get.fs import read_umask
from rcds.client.get.worker import WireJob, WireTarget, wire_job
from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind

from getkit import MANY, content, object_of, stopped_while_writing

if TYPE_CHECKING:
    from conftest import Site


def _jobs(site: Site, rels: list[str], dest: Path, copies: int = 1) -> list[WireJob]:
    """The jobs the main process would send for the files ``rels`` of ``MANY``, into ``dest``."""
    repo = site.open(cache_dir=site.work / "plan-cache")
    jobs = []
    for rel in rels:
        st = repo.lstat(f"{MANY}/{rel}")
        piece = repo.pieces(f"{MANY}/{rel}")[0]
        targets: list[WireTarget] = [
            (
                str(dest / f"{k}-{rel.replace('/', '-')}"),
                f"{MANY}/{rel}",
                st.st_mode,
                st.st_size,
                1_700_000_000,
                5,
            )
            for k in range(copies)
        ]
        jobs.append(wire_job(piece.hash, ObjectKind.FILE, piece.size, True, targets))
    return jobs


def test_a_batch_writes_every_target_with_its_mode_and_mtime(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    read_umask()
    rels = [r for r in sorted(many) if many[r]][:40]
    batch = _jobs(site, rels, tmp_path, copies=2)
    fetcher = site.open(cache_dir=tmp_path / "c").source.fetcher
    assert getworker.run_batch(fetcher, batch) == len(batch)
    for rel in rels:
        for k in range(2):
            path = tmp_path / f"{k}-{rel.replace('/', '-')}"
            st = path.stat()
            assert path.read_bytes() == many[rel]
            assert st.st_mtime_ns == 1_700_000_000_000_000_005
            assert st.st_mode & 0o777 == (0o600 if int(rel[-7:-4]) % 2 else 0o644)


def test_a_corrupt_object_is_refused_and_its_files_not_written(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    read_umask()
    obj = object_of(site, content(42))
    obj.write_bytes(obj.read_bytes()[:-3] + b"xyz")
    batch = _jobs(site, ["d0/f042.txt"], tmp_path)
    fetcher = site.open(cache_dir=tmp_path / "c").source.fetcher
    with pytest.raises(IntegrityError, match="corrupt"):
        getworker.run_batch(fetcher, batch)
    assert not list(tmp_path.glob("0-*"))


def test_verification_refuses_what_verify_sized_refuses() -> None:
    plain = b"some content\n" * 100
    stored = zlib.compress(plain)
    digest = ContentHash.of(stored).digest
    sha1 = Algorithm.SHA1.value
    assert getworker._verify(stored, digest, sha1, len(plain), True, "x") == plain
    for raw, size, what in [
        (stored, len(plain) + 1, "size"),  # the catalog says another size
        (stored, len(plain) - 1, "size"),
        (stored + b"junk", len(plain), "after the stream"),  # bytes after the stream
        (stored[:-1] + b"\0", len(plain), "hash"),  # another object
    ]:
        with pytest.raises(IntegrityError):
            getworker._verify(
                raw, ContentHash.of(raw).digest if what != "hash" else digest, sha1, size, True, "x"
            )
    assert getworker._verify(plain, ContentHash.of(plain).digest, sha1, len(plain), False, "x") == plain


def test_the_fast_path_takes_what_the_main_process_sends() -> None:
    assert getworker.FAST_MAX == BULK_MAX_OBJECT


def test_a_worker_imports_no_cache_module_unless_it_needs_one() -> None:
    heavy = ("sqlite3", "pathlib", "multiprocessing", "dataclasses")
    code = (
        "import sys, rcds.client.get.worker; "
        f"print(' '.join(m for m in sys.modules if m in {heavy!r}"
        " or m.startswith('rcds.client.cache') or m.startswith('rcds.repo')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []


def test_a_worker_told_to_stop_while_writing_finishes_that_file_first(
    site: Site, many: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_umask()
    batch = _jobs(site, ["d0/f007.txt"], tmp_path, copies=2)
    fetcher = site.open(cache_dir=tmp_path / "c").source.fetcher
    with stopped_while_writing(monkeypatch):
        getworker.run_batch(fetcher, batch)
    assert (tmp_path / "0-d0-f007.txt").read_bytes() == many["d0/f007.txt"]  # finished, then stopped
    assert not (tmp_path / "1-d0-f007.txt").exists()
    assert not list(tmp_path.glob(".*.tmp"))
