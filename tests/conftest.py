"""Shared fixtures: repositories created in temporary directories, verified views."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from keypool import pooled_key
from rcds.format import keys
from rcds.format.keys import load_public_key_file
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.view import RepositoryView, open_view
from rcds.testing.seaweedfs import SeaweedFS

from testkit import NAME, SMALL_CHUNKS, source_of

# No time limit per generated example: Hypothesis's default (200 ms) fails a property test on a
# loaded machine (DeadlineExceeded) whatever the code does; speed is measured in bench/.
settings.register_profile("rcds", deadline=None)
settings.load_profile("rcds")

_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture(autouse=True, scope="session")
def _pooled_keys() -> Iterator[None]:
    """Repository and fixture keys from the pool of ``keypool.py`` (not generated: ~0.09 CPU-s
    a key, two per repository); every key of the session is still a different one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys, "generate_key", pooled_key)
        yield


def pytest_configure(config: pytest.Config) -> None:
    """Each session its own base directory for ``tmp_path`` (unless ``--basetemp`` names one).

    pytest's default, ``/tmp/pytest-of-<user>/pytest-<n>``, is shared by every session of the
    user, and each session deletes the older ones (and the ``garbage-*`` that an interrupted
    deletion leaves) when its first test asks for a ``tmp_path``: on a machine where several
    people run the suite as the same user, that is minutes of deleting other sessions' trees
    inside some test's time limit. This directory is deleted when the session passes and kept
    (its path printed) when it fails.
    """
    if config.option.basetemp is None:
        config.option.basetemp = config.stash[_OWN_BASETEMP] = tempfile.mkdtemp(prefix="rcds-pytest-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete this session's own base directory if every test passed."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is None:
        return
    if exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)
    else:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"temporary files of this session kept in {own}")


@pytest.fixture
def repo(tmp_path: Path) -> Stratum0:
    """A fresh repository with small chunk sizes (so chunking shows on small files)."""
    root = tmp_path / "repo"
    create_repository(root, Settings(name=NAME, **SMALL_CHUNKS))  # type: ignore[arg-type]
    return Stratum0(root, NAME)


@pytest.fixture
def s3_repo(tmp_path: Path, s3_url: str) -> Stratum0:
    """Like ``repo``, with the served tree in S3 (a fresh prefix on the session's SeaweedFS)."""
    root = tmp_path / "repo"
    create_repository(root, Settings(name=NAME, storage=s3_url, **SMALL_CHUNKS))  # type: ignore[arg-type]
    return Stratum0(root, NAME)


@pytest.fixture(params=["local", "s3"])
def any_repo(request: pytest.FixtureRequest) -> Stratum0:
    """``repo`` and ``s3_repo`` in turn: for tests that must hold on both backends."""
    return request.getfixturevalue("repo" if request.param == "local" else "s3_repo")  # type: ignore[no-any-return]


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


# -- S3 (a real SeaweedFS on loopback, started once per session) ------------------------------------

S3_BUCKET = "rcds"
_s3_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One ``weed server -s3`` for the whole session, with the bucket ``rcds``."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.make_bucket(S3_BUCKET)
        yield server
    finally:
        server.stop(timeout=3)


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """The session's SeaweedFS, its credentials and endpoint in the usual AWS environment variables."""
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweedfs


@pytest.fixture
def s3_url(s3_env: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://rcds/<unique prefix>`` (one per test) on the session's SeaweedFS."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return f"s3://{S3_BUCKET}/t{next(_s3_prefixes)}-{os.getpid()}-{safe}"
