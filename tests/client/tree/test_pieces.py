"""pieces_of: the objects of a file, checked to cover it exactly."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.client.tree.files import Piece, pieces_of
from rcds.errors import IntegrityError, NotFoundError
from rcds.format.catalog_schema import Tally
from rcds.format.dirent import FLAG_DIR, FLAG_EXTERNAL, Chunk, Dirent, file_flags
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.publish.catalog_rw import WritableCatalog
from rcds.repo.catalog import Catalog

H = ContentHash.of(b"content")
FILE = file_flags(Algorithm.SHA1)
CHUNKED = file_flags(Algorithm.SHA1, chunked=True)


def _entry(
    name: str, size: int, flags: int = FILE, h: ContentHash | None = H, mode: int = 0o100644
) -> Dirent:
    return Dirent(f"/sw/{name}", name, mode, size, 1, flags, hash=h)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    path = tmp_path / "cat.db"
    w = WritableCatalog.create(
        path, Dirent("/sw", "sw", stat.S_IFDIR | 0o755, 4096, 1, FLAG_DIR, hardlinks=2)
    )
    parts = [ContentHash.of(bytes([i])) for i in range(3)]
    for name, chunks in {
        "good": [Chunk(0, 10, parts[0]), Chunk(10, 5, parts[1]), Chunk(15, 1, parts[2])],
        "gap": [Chunk(0, 10, parts[0]), Chunk(11, 5, parts[1])],
        "short": [Chunk(0, 10, parts[0])],
        "none": [],
    }.items():
        w.insert(_entry(name, 16, CHUNKED, None))
        w.insert_chunks(f"/sw/{name}", chunks)
    w.finalize(revision=1, previous=None, last_modified=1, subtree=Tally())
    w.close()
    with Catalog(path, "/sw") as cat:
        yield cat


def test_one_object(catalog: Catalog) -> None:
    (p,) = pieces_of(_entry("f", 7), catalog)
    assert p == Piece(0, 7, H, ObjectKind.FILE) and p.end == 7
    assert pieces_of(_entry("e", 0, h=None), catalog) == []
    assert pieces_of(_entry("e", 0), catalog) == [Piece(0, 0, H, ObjectKind.FILE)]
    with pytest.raises(AttributeError):
        p.size = 3  # type: ignore[misc]


def test_chunks(catalog: Catalog) -> None:
    good = catalog.lookup("/sw/good")
    assert good is not None
    pieces = pieces_of(good, catalog)
    assert [(p.offset, p.size, p.kind) for p in pieces] == [
        (0, 10, ObjectKind.PARTIAL),
        (10, 5, ObjectKind.PARTIAL),
        (15, 1, ObjectKind.PARTIAL),
    ]
    with pytest.raises(IntegrityError, match="gap or overlap"):
        pieces_of(catalog.lookup("/sw/gap"), catalog)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="chunks cover 10 bytes"):
        pieces_of(catalog.lookup("/sw/short"), catalog)  # type: ignore[arg-type]
    assert pieces_of(catalog.lookup("/sw/none"), catalog) == []  # type: ignore[arg-type]


def test_refusals(catalog: Catalog) -> None:
    with pytest.raises(IntegrityError, match="without content hash"):
        pieces_of(_entry("f", 3, h=None), catalog)
    with pytest.raises(IntegrityError, match="negative size"):
        pieces_of(_entry("f", -1), catalog)
    with pytest.raises(NotFoundError, match="external file"):
        pieces_of(_entry("f", 3, FILE | FLAG_EXTERNAL), catalog)
    for mode in (0o040755, 0o120777, 0o020644):
        with pytest.raises(NotFoundError, match="not a regular file"):
            pieces_of(_entry("x", 3, mode=mode), catalog)
