"""``rcds get`` and ``Repository.prefetch`` through pipelined batches (``Fetcher.fetch_many``).

Real engine servers on loopback; a tree of a few hundred small files (with duplicated contents)
so that the batch path runs in several lanes.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.get.materialize import materialize
from rcds.errors import IntegrityError
from rcds.format.pathhash import md5_pair

from getkit import MANY, regular_files
from repo_tamper import Tamper
from testkit import NAME

if TYPE_CHECKING:
    from conftest import Site


@pytest.mark.parametrize("name", ["..", "x/../../../evil"])
def test_a_name_that_would_leave_the_destination_is_refused(
    site: Site, many: dict[str, bytes], tmp_path: Path, name: str
) -> None:
    # a publisher gone bad: a row renamed (under the path hash of its new path), everything re-signed
    old, new = f"{MANY}/d3/f010.txt", f"{MANY}/d3/{name}"

    def rename(db: sqlite3.Connection) -> None:
        cur = db.execute(
            "UPDATE catalog SET name = ?, md5path_1 = ?, md5path_2 = ? WHERE md5path_1 = ? AND md5path_2 = ?",
            (name, *md5_pair(new), *md5_pair(old)),
        )
        assert cur.rowcount == 1

    Tamper(site.root, NAME).edit_catalog(MANY, rename)
    dest = tmp_path / "area" / "out"
    with pytest.raises(IntegrityError, match="would leave the destination"):
        materialize(site.open(cache_dir=tmp_path / "cache"), MANY, dest)
    assert sorted(p.name for p in (tmp_path / "area").iterdir()) == ["out"]  # nothing beside it
    assert not (tmp_path / "evil").exists()
    for rel, data in regular_files(dest).items():  # what was written before the refusal is right
        assert data == many[rel]


def test_get_copies_cached_objects_from_the_cache(site: Site, many: dict[str, bytes], tmp_path: Path) -> None:
    repo = site.open()
    for rel in list(many)[:50]:
        repo.read_bytes(f"{MANY}/{rel}")
    repo.source.flush()
    stats = dict(repo.source.stats)
    materialize(repo, MANY, tmp_path / "out")
    assert regular_files(tmp_path / "out") == many
    assert repo.source.stats["local"] - stats["local"] >= 40


def test_prefetch_brings_files_into_the_cache(site: Site, many: dict[str, bytes]) -> None:
    repo = site.open()
    paths = [f"{MANY}/{rel}" for rel in list(many)[::3]]
    n = repo.prefetch([*paths, f"{MANY}/lnk"])  # symlinks are followed
    assert n == len({many[p[len(MANY) + 1 :]] for p in paths} - {b""})
    assert repo.prefetch(paths) == 0  # all cached (or queued for the cache) now
    before = site.fetched("data/")
    for p in paths:
        assert repo.read_bytes(p) == many[p[len(MANY) + 1 :]]
    assert site.fetched("data/") == before


def test_cache_batches_respect_the_quota(site: Site, many: dict[str, bytes], tmp_path: Path) -> None:
    quota = 200 << 10  # the pinned catalogs take ~120 KiB
    repo = site.open(cache_dir=tmp_path / "small", quota_bytes=quota)
    repo.prefetch([f"{MANY}/{rel}" for rel in many])
    repo.source.flush()
    assert repo.cache.check() == []
    assert repo.cache.size() <= quota
    for rel in list(many)[:20]:
        assert repo.read_bytes(f"{MANY}/{rel}") == many[rel]


def test_client_commands_import_nothing_of_the_service() -> None:
    """Start-up cost: no service, publisher, numpy, nor urllib3 (only https needs it)."""
    code = (
        "import sys\n"
        "from rcds.cli.main import build_parser\n"
        "build_parser(['get', 'x:/y', 'z'])\n"
        "import rcds.client.get.materialize\n"
        "heavy = ('aiohttp', 'rcds.service', 'rcds.publish', 'numpy', 'urllib3')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
