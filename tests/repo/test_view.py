"""The verified repository view, reading stock-published repositories and our own (locally and over HTTP)."""

from __future__ import annotations

import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError, NotFoundError
from rcds.format import keys
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.http_source import HttpSource
from rcds.repo.source import Source, StoreSource
from rcds.repo.view import RepositoryView, normalise_path, open_view
from rcds.serve.http import make_server
from rcds.storage.local import LocalStore

from repo_tamper import Item, build_tar, copy_tree, flip_byte

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
CHUNK_MIN, CHUNK_MAX = 64 << 10, 256 << 10  # the stock fixtures' chunk sizes


@dataclass(frozen=True)
class Expected:
    """What the source tarball says about one path."""

    kind: str  # dir, file, symlink
    mode: int
    mtime: int
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class StockRepo:
    name: str
    tarball: str
    algorithm: Algorithm
    revision: int

    @property
    def path(self) -> Path:
        return FIXTURES / self.name

    def key(self) -> list[rsa.RSAPublicKey]:
        return [keys.load_public_key_file(FIXTURES / f"{self.name}.pub")]


STOCK = [
    StockRepo("stock.example.org", "stock.example.org.rev2-source.tar.gz", Algorithm.SHA1, 2),
    StockRepo("shake.example.org", "shake.example.org.rev1-source.tar.gz", Algorithm.SHAKE128, 1),
]


def _tar_path(name: str) -> str:
    n = name[2:] if name.startswith("./") else name
    n = n.strip("/")
    return "" if n in ("", ".") else "/" + n


def read_source_tarball(path: Path) -> dict[str, Expected]:
    """Repository path -> expectation; hard links resolve to their target's content (stock breaks them up)."""
    out: dict[str, Expected] = {}
    links: dict[str, str] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            p = _tar_path(m.name)
            if m.isdir():
                out[p] = Expected("dir", m.mode, int(m.mtime))
            elif m.issym():
                out[p] = Expected("symlink", 0o777, int(m.mtime), target=m.linkname)
            elif m.islnk():
                links[p] = _tar_path(m.linkname)
            else:
                f = tf.extractfile(m)
                assert f is not None
                out[p] = Expected("file", m.mode, int(m.mtime), f.read())
    for p, target in links.items():
        out[p] = out[target]
    return out


@pytest.fixture(scope="module", params=STOCK, ids=lambda r: r.name)
def stock(request: pytest.FixtureRequest) -> StockRepo:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stock_view(stock: StockRepo) -> Iterator[RepositoryView]:
    with open_view(StoreSource(LocalStore(stock.path)), stock.name, stock.key()) as v:
        yield v


@pytest.fixture(scope="module")
def stock_tree(stock: StockRepo) -> dict[str, Expected]:
    return read_source_tarball(FIXTURES / stock.tarball)


def check_against(view: RepositoryView, expected: dict[str, Expected], *, mtimes: bool = True) -> None:
    """Every path of ``expected`` and nothing else is in the view, with the right type and content."""
    walked = {d.path: d for d in view.walk()}
    assert sorted(walked) == sorted(expected)
    for path, exp in expected.items():
        d = walked[path]
        assert d == view.lookup(path) or d.is_nested_mountpoint, path
        assert d.is_dir + d.is_regular + d.is_symlink == 1, path
        assert stat.S_IMODE(d.mode) == exp.mode, path
        if exp.kind == "dir":
            assert d.is_dir, path
            names = sorted(c.name for c in view.listdir(path))
            assert names == sorted(p.rsplit("/", 1)[1] for p in expected if p and p.rsplit("/", 1)[0] == path)
            assert d.link_count >= 2
        elif exp.kind == "symlink":
            assert d.is_symlink, path
            assert d.symlink == exp.target, path
            assert d.size == len(exp.target.encode()), path
            assert d.hash is None
            with pytest.raises(NotFoundError):
                view.read(path)
        else:
            assert d.is_regular, path
            assert d.size == len(exp.data), path
            assert view.read(path) == exp.data, path
            assert d.link_count == 1 and d.hardlink_group == 0, path
        if mtimes and exp.kind != "dir":
            assert d.mtime == exp.mtime, path


# -- stock-published repositories ----------------------------------------------------------------


def test_stock_tree_matches_source(stock_view: RepositoryView, stock_tree: dict[str, Expected]) -> None:
    check_against(stock_view, stock_tree)


def test_stock_manifest_facts(stock: StockRepo, stock_view: RepositoryView) -> None:
    m = stock_view.manifest
    assert m.repository_name == stock.name
    assert m.revision == stock.revision
    assert m.root_catalog.algorithm is stock.algorithm
    root = stock_view.root_catalog()
    assert root.revision == stock.revision
    assert root.mountpoint == ""
    assert [n[0] for n in root.nested()] == ["/sw/grp/cidA", "/sw/grp/cidB"]


def test_stock_catalog_markers(stock: StockRepo, stock_view: RepositoryView) -> None:
    empty = ContentHash.of(zlib.compress(b""), stock.algorithm)
    for cid in ("/sw/grp/cidA", "/sw/grp/cidB"):
        marker = stock_view.lookup(cid + "/.cvmfscatalog")
        assert marker.is_regular and marker.size == 0
        assert marker.hash == empty
        assert stock_view.read(cid + "/.cvmfscatalog") == b""
        assert stock.path.joinpath(empty.object_name()).is_file()
        # the mount point row lives in the nested catalog (flag 32), the parent marks it (flag 2)
        cat = stock_view.catalog_for(cid)
        assert cat.mountpoint == cid
        assert cat.properties["root_prefix"] == cid
        assert stock_view.lookup(cid).is_nested_root
        parent_rows = {d.name: d for d in stock_view.catalog_for("/sw/grp").listdir("/sw/grp")}
        assert parent_rows[cid.rsplit("/", 1)[1]].is_nested_mountpoint
    assert stock_view.catalog_for("/sw/grp").mountpoint == ""
    assert stock_view.catalog_for("/sw/grp/cidA/a/b/c/d/e/f.txt").mountpoint == "/sw/grp/cidA"


def test_stock_hard_links_broken_up(stock: StockRepo, stock_view: RepositoryView) -> None:
    h1 = stock_view.lookup("/sw/grp/cidA/hard1")
    h2 = stock_view.lookup("/sw/grp/cidA/hard2")
    assert h1.hash == h2.hash
    assert h1.hash is not None and h1.hash.algorithm is stock.algorithm
    assert (h1.link_count, h1.hardlink_group) == (h2.link_count, h2.hardlink_group) == (1, 0)
    assert stock_view.read("/sw/grp/cidA/hard1") == stock_view.read("/sw/grp/cidA/hard2")


def test_stock_symlinks(stock_view: RepositoryView) -> None:
    rel = stock_view.lookup("/sw/grp/cidA/link-rel")
    assert rel.is_symlink and rel.symlink == "lib/pkg" and rel.size == 7
    absolute = stock_view.lookup("/sw/grp/cidA/link-abs")
    assert absolute.is_symlink and absolute.symlink == "/cvmfs/elsewhere.org/x"


def test_stock_chunked_files(
    stock: StockRepo, stock_view: RepositoryView, stock_tree: dict[str, Expected]
) -> None:
    chunked = [d for d in stock_view.walk() if d.is_regular and d.is_chunked]
    assert sorted(d.path for d in chunked) == ["/sw/grp/cidA/data/random.bin", "/sw/grp/cidA/data/text.dat"]
    source = stock_view.source
    for d in chunked:
        assert d.hash is None  # no legacy bulk chunk
        assert d.algorithm is stock.algorithm
        chunks = stock_view.catalog_for(d.path).chunks(d)
        assert len(chunks) > 1
        offset = 0
        content = stock_tree[d.path].data
        for i, c in enumerate(chunks):
            assert c.offset == offset, d.path
            assert c.size <= CHUNK_MAX
            if i < len(chunks) - 1:
                assert c.size >= CHUNK_MIN
            name = c.hash.object_name(ObjectKind.PARTIAL)
            assert name.endswith(stock.algorithm.identifier + "P")
            assert stock.path.joinpath(name).is_file()
            piece = source.object(c.hash, ObjectKind.PARTIAL, size=c.size)
            assert piece == content[c.offset : c.offset + c.size]
            offset += c.size
        assert offset == d.size == len(content)
        assert b"".join(stock_view.read_chunks(d)) == content


def test_stock_special_modes(stock_view: RepositoryView) -> None:
    assert stat.S_IMODE(stock_view.lookup("/sw/grp/cidA/private.txt").mode) == 0o600
    assert stat.S_IMODE(stock_view.lookup("/sw/grp/cidA/bin/run.sh").mode) == 0o755
    assert stock_view.read("/sw/grp/cidA/empty.txt") == b""
    name = "/sw/grp/cidA/dönüş/ünïcödé.txt"
    assert stock_view.lookup(name).name == "ünïcödé.txt"
    assert [d.name for d in stock_view.listdir("/sw/grp/cidA/dönüş")] == ["ünïcödé.txt"]


def test_stock_every_file_object_is_stored(stock: StockRepo, stock_view: RepositoryView) -> None:
    store = LocalStore(stock.path)
    for d in stock_view.walk():
        if d.is_regular and not d.is_chunked:
            assert d.hash is not None
            assert store.has(d.hash.object_name()), d.path
            assert d.hash.algorithm is stock.algorithm


# -- lookups and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("/", ""), ("", ""), ("/a/b", "/a/b"), ("a/b/", "/a/b"), ("//a//./b/", "/a/b"), (".", "")],
)
def test_normalise_path(given: str, expected: str) -> None:
    assert normalise_path(given) == expected


def test_view_errors(stock_view: RepositoryView) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        stock_view.lookup("/sw/grp/cidA/nothing")
    with pytest.raises(NotFoundError):
        stock_view.lookup("/sw/grp/cidC/x")
    with pytest.raises(NotFoundError):
        stock_view.read("/sw/grp/cidA/missing.txt")
    with pytest.raises(NotFoundError, match="not a directory"):
        stock_view.listdir("/sw/grp/cidA/bin/run.sh")
    with pytest.raises(NotFoundError, match="not a regular file"):
        stock_view.read("/sw/grp/cidA")
    with pytest.raises(NotFoundError, match=r"\.\."):
        stock_view.lookup("/sw/../etc")
    assert stock_view.lookup("sw/grp/cidA/bin/").path == "/sw/grp/cidA/bin"
    assert stock_view.lookup("/").path == ""
    assert [d.path for d in stock_view.walk("/sw/grp/cidB/lib")] == [
        "/sw/grp/cidB/lib",
        "/sw/grp/cidB/lib/pkg",
        "/sw/grp/cidB/lib/pkg/__init__.py",
    ]
    assert [d.path for d in stock_view.walk("/sw/grp/cidB/README")] == ["/sw/grp/cidB/README"]


def test_view_refuses_corrupt_object_on_read(tmp_path: Path) -> None:
    repo = STOCK[0]
    root = copy_tree(repo.path, tmp_path / repo.name)
    with open_view(StoreSource(LocalStore(root)), repo.name, repo.key()) as v:
        h = v.lookup("/sw/grp/cidB/README").hash
        assert h is not None
        flip_byte(root / h.object_name(), 3)
        with pytest.raises(IntegrityError, match="hash mismatch"):
            v.read("/sw/grp/cidB/README")
        assert v.read("/sw/grp/cidB/tool.py")  # the rest still reads


def test_view_with_workdir(tmp_path: Path) -> None:
    repo = STOCK[1]
    source = StoreSource(LocalStore(repo.path))
    work = tmp_path / "work"
    work.mkdir()
    with open_view(source, repo.name, repo.key(), workdir=work) as v:
        assert v.read("/sw/grp/cidB/README")
        assert any(work.iterdir())
    assert work.is_dir()


# -- our own repositories ----------------------------------------------------------------------------

OWN_NAME = "test.example.org"
RANDOM = os.urandom(100_000)
ITEMS = [
    Item("bin", kind="dir", mode=0o755),
    Item("bin/run.sh", b"#!/bin/sh\necho hello\n", mode=0o755),
    Item("empty.txt", b""),
    Item("private.txt", b"secret\n", mode=0o600),
    Item("data", kind="dir", mode=0o755),
    Item("data/random.bin", RANDOM),
    Item("data/text.txt", b"text line\n" * 5000),
    Item("dönüş", kind="dir", mode=0o755),
    Item("dönüş/ünïcödé.txt", "héllo wörld\n".encode()),
    Item("a/b/c/deep.txt", b"deep\n"),
    Item("link-rel", kind="symlink", target="bin/run.sh", mode=0o777),
    Item("link-abs", kind="symlink", target="/cvmfs/elsewhere.org/x", mode=0o777),
]


def _expected_own(mount: str) -> dict[str, Expected]:
    out: dict[str, Expected] = {}
    for it in ITEMS:
        p = f"{mount}/{it.name}"
        kind = it.kind
        out[p] = Expected(kind, it.mode, it.mtime, it.data or b"", it.target)
    for p in list(out):  # implicit parent directories
        while p.count("/") > 1:
            p = p.rsplit("/", 1)[0]
            out.setdefault(p, Expected("dir", 0o755, 0))
    return out


@pytest.fixture(scope="module", params=["sha1", "rmd160", "shake128"])
def own_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own") / "repo"
    create_repository(
        root,
        Settings(
            name=OWN_NAME, hash_algorithm=request.param, chunk_min=4096, chunk_avg=8192, chunk_max=16384
        ),
    )
    s0 = Stratum0(root, OWN_NAME)
    s0.ingest_tar(build_tar(ITEMS), "/sw/grp/cid1", now=1_700_000_100)
    s0.ingest_tar(build_tar(ITEMS[:4]), "/sw/grp/cid2", now=1_700_000_200)
    return root


def _own_view(root: Path, source: Source | None = None) -> RepositoryView:
    key = keys.load_public_key_file(root / "keys" / f"{OWN_NAME}.pub")
    return open_view(source or StoreSource(LocalStore(root / "public")), OWN_NAME, [key])


def test_own_repository_round_trip(own_repo: Path) -> None:
    with _own_view(own_repo) as v:
        assert v.manifest.revision == 2
        walked = {d.path for d in v.walk()}
        for mount in ("/sw/grp/cid1", "/sw/grp/cid2"):
            marker = v.lookup(mount + "/.cvmfscatalog")
            assert marker.is_regular and marker.size == 0
            assert v.catalog_for(mount).mountpoint == mount
        exp = _expected_own("/sw/grp/cid1")
        for path, e in exp.items():
            d = v.lookup(path)
            assert path in walked
            if e.kind == "file":
                assert v.read(path) == e.data, path
                assert stat.S_IMODE(d.mode) == e.mode, path
                assert d.mtime == e.mtime
            elif e.kind == "symlink":
                assert d.symlink == e.target
            else:
                assert d.is_dir
        algo = v.manifest.root_catalog.algorithm
        big = v.lookup("/sw/grp/cid1/data/random.bin")
        assert big.is_chunked and big.algorithm is algo
        chunks = v.catalog_for(big.path).chunks(big)
        assert len(chunks) > 2
        assert [c.offset for c in chunks] == [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
        assert sum(c.size for c in chunks) == len(RANDOM)
        assert all(c.hash.algorithm is algo for c in chunks)
        assert v.lookup("/sw/grp/cid2/bin/run.sh").hash == v.lookup("/sw/grp/cid1/bin/run.sh").hash


def test_own_repository_over_http(own_repo: Path) -> None:
    server = make_server({OWN_NAME: own_repo / "public"})
    server.start_background()
    try:
        source = HttpSource.for_url(server.url_for(OWN_NAME))
        try:
            with _own_view(own_repo, source) as v:
                assert v.read("/sw/grp/cid1/data/random.bin") == RANDOM
                assert v.read("/sw/grp/cid1/dönüş/ünïcödé.txt") == "héllo wörld\n".encode()
                assert [d.name for d in v.listdir("/sw/grp")] == ["cid1", "cid2"]
        finally:
            source.close()
    finally:
        server.stop()


def test_stock_repository_over_http() -> None:
    repo = STOCK[1]
    server = make_server({repo.name: repo.path})
    server.start_background()
    try:
        source = HttpSource.for_url(server.url_for(repo.name))
        try:
            with open_view(source, repo.name, repo.key()) as v:
                tree = read_source_tarball(FIXTURES / repo.tarball)
                for path in ("/sw/grp/cidA/data/random.bin", "/sw/grp/cidB/tool.py", "/sw/grp/cidA/hard2"):
                    assert v.read(path) == tree[path].data
        finally:
            source.close()
    finally:
        server.stop()
