"""The one definition of a repository name (:mod:`rcds.format.names`), and the layers using it."""

from __future__ import annotations

import re

import pytest

from rcds.client.config.names import check_fqrn as client_check
from rcds.errors import ConfigError, InputError
from rcds.format import names
from rcds.format.notification import check_repository
from rcds.publish.layout import check_fqrn as publish_check
from rcds.replica.registry import check_fqrn as replica_check
from rcds.serve.handler import is_valid_repository_name

GOOD = [
    "sw.example.org",
    "a.b",
    "cvmfs-config.cern.ch",
    "Atlas_Nightlies.CERN.ch",
    "x1.y-2.z_3",
    "a" * 63 + ".org",
]
BARE = ["local", "a", "my_repo"]
BAD = [
    "", ".", "..", "a..b", ".a.b", "a.b.", "-a.b", "a-.b", "a_.b", "a/b.c", "a b.c", "a.b\n", "ä.org",
    "a" * 64 + ".org", ("a." * 127) + "org",  # a label of 64, a name of 257 characters
]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_fully_qualified_names_pass_everywhere(name: str) -> None:
    assert names.is_repository_name(name) and names.is_repository_name(name, qualified=False)
    assert client_check(name) == replica_check(name) == check_repository(name) == name
    assert is_valid_repository_name(name)
    assert re.fullmatch(names.TOKEN, name)  # the URL token covers every name


@pytest.mark.parametrize("name", BARE)
def test_a_bare_label_is_a_name_but_not_fully_qualified(name: str) -> None:
    assert names.is_repository_name(name, qualified=False) and not names.is_repository_name(name)
    assert client_check(name) == check_repository(name) == name  # stock's config lookup takes one
    with pytest.raises(ConfigError, match=r"like sw\.example\.org"):
        replica_check(name)
    with pytest.raises(ConfigError, match=r"like user1\.example\.org"):
        publish_check(name)


@pytest.mark.parametrize("name", BAD)
def test_malformed_names_fail_everywhere_with_a_clear_error(name: str) -> None:
    assert not names.is_repository_name(name, qualified=False)
    assert not is_valid_repository_name(name)
    with pytest.raises(ConfigError, match="not a repository name"):
        client_check(name)
    with pytest.raises(ConfigError, match="not a repository name"):
        replica_check(name)
    with pytest.raises(ConfigError, match="not a valid repository name"):
        publish_check(name)
    with pytest.raises(InputError, match="must be a repository name"):
        check_repository(name)


def test_new_repositories_are_lowercase_dns_names() -> None:
    assert publish_check("user1.example.org") == "user1.example.org"
    for name in ("User1.example.org", "user_1.example.org"):
        assert names.is_repository_name(name) and not names.is_new_repository_name(name)
        with pytest.raises(ConfigError, match="not a valid repository name"):
            publish_check(name)
    assert not names.is_new_repository_name(None) and not names.is_repository_name(b"a.b")
