"""Fixtures for the job tools: a real publishing service on loopback, client access, code trees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.jobs.wait import ClientAccess
from rcds.service.runner import ServiceThread

import jobkit


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    """One service (two repositories) shared by a test module; tests use distinct code."""
    st = ServiceThread(jobkit.service_config(tmp_path_factory.mktemp("svc")))
    yield st
    st.stop()


@pytest.fixture
def access(service: ServiceThread, tmp_path: Path) -> ClientAccess:
    """Client-library access to the service's repositories, with a private cache."""
    return ClientAccess(
        (jobkit.repo_url_template(service),), jobkit.key_dirs(service), cache_dir=tmp_path / "cache"
    )


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nobody listens on."""
    return jobkit.dead_url()


@pytest.fixture
def code(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A code tree unique to the test."""
    return jobkit.make_code(tmp_path / "mycode", request.node.nodeid)
