"""Fixtures for the service tests: a throw-away PKI and token issuers (see pki.py), and ``api``, a
pubapi client of the module's own ``svc`` fixture (a running service)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rcds.service.auth.x509 import TrustStore
from rcds.service.runner import ServiceThread

import pki
import servicekit as kit


@pytest.fixture(scope="session")
def ca() -> pki.CA:
    """The trusted root CA."""
    return pki.CA("/DC=org/DC=example/CN=Example Test CA")


@pytest.fixture(scope="session")
def other_ca() -> pki.CA:
    """A CA nobody trusts."""
    return pki.CA("/DC=org/DC=other/CN=Other CA")


@pytest.fixture(scope="session")
def alice(ca: pki.CA) -> pki.Credential:
    """A user certificate issued by ``ca``."""
    return ca.issue("/DC=org/DC=example/O=Test/CN=Alice Smith")


@pytest.fixture(scope="session")
def trust(ca: pki.CA) -> TrustStore:
    """A trust store holding only ``ca``."""
    return TrustStore([ca.cert])


@pytest.fixture(scope="session")
def rsa_key() -> pki.TokenKey:
    """An RS256 issuer key."""
    return pki.TokenKey("RS256")


@pytest.fixture(scope="session")
def ec_key() -> pki.TokenKey:
    """An ES256 issuer key."""
    return pki.TokenKey("ES256")


@pytest.fixture
def ca_dir(tmp_path: Path, ca: pki.CA) -> Path:
    """A grid-security style directory trusting ``ca``."""
    return pki.write_ca_dir(tmp_path / "certificates", ca)


@pytest.fixture
def api(svc: ServiceThread) -> Iterator[kit.Api]:
    """A pubapi client of ``svc``, which the test module defines."""
    a = kit.Api(svc.url)
    yield a
    a.close()
