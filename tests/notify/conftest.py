"""Fixtures for the broker tests: one repository per module to sign notifications, a running broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rcds.notify.broker import Broker
from rcds.notify.server import BrokerThread
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0

from notifykit import Signer
from testkit import NAME


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """Signs manifests of a fresh repository (made once per module: key generation is slow)."""
    root = tmp_path_factory.mktemp("notify") / "repo"
    create_repository(root, Settings(name=NAME))
    return Signer(Stratum0(root, NAME))


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    """A broker on a loopback port, stopped after the test."""
    with BrokerThread(Broker(check_interval=0.5)) as b:
        yield b
