"""Shared fixtures: repositories created in temporary directories, verified views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rcds.format.keys import load_public_key_file
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.view import RepositoryView, open_view

from testkit import NAME, SMALL_CHUNKS, source_of


@pytest.fixture
def repo(tmp_path: Path) -> Stratum0:
    """A fresh repository with small chunk sizes (so chunking shows on small files)."""
    root = tmp_path / "repo"
    create_repository(root, Settings(name=NAME, **SMALL_CHUNKS))  # type: ignore[arg-type]
    return Stratum0(root, NAME)


@pytest.fixture
def view_factory() -> Iterator[Callable[[Stratum0], RepositoryView]]:
    """Open verified views of a repository's current revision; closed at teardown."""
    opened: list[RepositoryView] = []

    def make(s0: Stratum0) -> RepositoryView:
        v = open_view(source_of(s0), s0.name, [load_public_key_file(s0.layout.key("pub"))])
        opened.append(v)
        return v

    yield make
    for v in opened:
        v.close()
