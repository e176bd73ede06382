"""Fixtures shared by the format tests: RSA keys (made once per test module)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.format import keys


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit repository key."""
    return keys.generate_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    """A second, unrelated key (for forged signatures)."""
    return keys.generate_key()
