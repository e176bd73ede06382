"""Request-target parsing and the path rules of the repository server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rcds.errors import NotFoundError
from rcds.serve.handler import Target, is_allowed, is_valid_repository_name, open_file, parse_target

OBJ = "data/ab/" + "cd" * 19 + "C"


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("/cvmfs/r.example.org/.cvmfspublished", (".cvmfspublished",)),
        ("/cvmfs/r.example.org/.cvmfspublished?x=1", (".cvmfspublished",)),
        ("/cvmfs/r.example.org/%2Ecvmfswhitelist", (".cvmfswhitelist",)),
        (f"/cvmfs/r.example.org/{OBJ}", tuple(OBJ.split("/"))),
        ("/cvmfs/r.example.org/api/v1.0/x", ("api", "v1.0", "x")),
        ("HTTP://host:80/cvmfs/r.example.org/.cvmfsreflog", (".cvmfsreflog",)),
    ],
)
def test_parse_accepts(raw: str, parts: tuple[str, ...]) -> None:
    assert parse_target(raw) == Target("r.example.org", parts)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "/",
        "/cvmfs/r/",
        "/cvmfs/r",
        "/cvmfs//x",
        "/cvmfs/r/../x",
        "/cvmfs/r/%2e%2e/x",
        "/cvmfs/r/a%2fb",
        "/cvmfs/r/a\\b",
        "/cvmfs/r/a%5cb",
        "/cvmfs/r/a%00",
        "/cvmfs/r/a\x00",
        "/cvmfs/r/%ff",
        "/cvmfs/r/a%zz",
        "/cvmfs/r/a b",
        "/cvmfs/r/data/txn/tmp.1",
        "/cvmfs/r/data/AB/x",
        "/cvmfs/r/data/ab",
        "/cvmfs/r/data/ab/c/d",
        "/cvmfs/r/.git/config",
        "/cvmfs/r/.cvmfs/x",
        "/cvmfs/r/sub/.cvmfspublished",
        "/cvmfs/.x/.cvmfspublished",
        "http://host",
        "http://host?/cvmfs/r/.cvmfspublished",
        "/cvmfs/r/" + "a" * 5000,
    ],
)
def test_parse_refuses(raw: str) -> None:
    with pytest.raises(NotFoundError):
        parse_target(raw)


def test_root_file_detection() -> None:
    assert Target("r", (".cvmfspublished",)).is_root_file
    assert not Target("r", tuple(OBJ.split("/"))).is_root_file


def test_names_and_rules() -> None:
    assert is_valid_repository_name("user1.example.org")
    assert not is_valid_repository_name("..")
    assert not is_allowed([])
    assert is_allowed(["sub", "file"])
    assert not is_allowed(["sub", ".file"])


@pytest.mark.usefixtures("open_strategy")
def test_open_file_checks_containment(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "data/ab").mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes(b"m")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "data/ab/out").symlink_to(tmp_path / "secret")
    (root / "data/ab/loop").symlink_to("loop")
    f, size = open_file(str(root), [".cvmfspublished"])
    with f:
        assert (f.read(), size) == (b"m", 1)
    for parts in (["data", "ab", "out"], ["data", "ab", "loop"], ["data", "ab"], ["missing"]):
        with pytest.raises(NotFoundError):
            open_file(str(root), parts)
    assert os.listdir(root / "data/ab")  # nothing was consumed or changed
