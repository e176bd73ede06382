"""``rcds get`` of chunked files: pieces from the cache and from the network, written at their offsets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.get.materialize import materialize
from rcds.errors import IntegrityError
from rcds.format.hashes import ObjectKind

from clientkit import C1

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(120)

BIG_PATH = f"{C1}/a/big.bin"


def _cached_piece(cache: Path, name: str) -> Path:
    """The local cache file of the object ``data/ab/cd...`` (found by its name's tail)."""
    tail = name.rsplit("/", 1)[-1]
    found = [p for p in cache.rglob(f"*{tail}") if p.is_file()]
    assert len(found) == 1, (name, found)
    return found[0]


def test_a_chunked_file_mixes_cached_and_downloaded_pieces(site: Site, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo = site.open(cache_dir=cache)
    pieces = repo.pieces(BIG_PATH)
    assert len(pieces) >= 4 and {p.kind for p in pieces} == {ObjectKind.PARTIAL}
    materialize(repo, BIG_PATH, tmp_path / "first.bin", keep_in_cache=True)
    assert (tmp_path / "first.bin").read_bytes() == site.big
    repo.close()
    evicted = [p for i, p in enumerate(pieces) if i % 2 == 1]  # every other piece: gaps both ways
    for p in evicted:
        _cached_piece(cache, p.hash.object_name(p.kind)).unlink()
    before = {p.hash: site.fetched(p.hash.object_name(p.kind)) for p in pieces}
    report = materialize(site.open(cache_dir=cache), BIG_PATH, tmp_path / "second.bin")
    assert (tmp_path / "second.bin").read_bytes() == site.big  # each piece at its offset
    assert report.bytes == len(site.big)
    for p in pieces:  # the cached pieces were copied, only the evicted ones downloaded
        again = site.fetched(p.hash.object_name(p.kind)) - before[p.hash]
        assert again == (1 if p in evicted else 0), p


def test_a_corrupt_piece_leaves_no_file(site: Site, tmp_path: Path) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    piece = repo.pieces(BIG_PATH)[2]
    served = site.object_path(site.public, piece.hash, piece.kind)
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(IntegrityError):
        materialize(repo, BIG_PATH, dest)
    assert list(dest.iterdir()) == []  # neither the file nor a temp file
