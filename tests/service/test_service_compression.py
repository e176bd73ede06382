"""The service's ``compression`` key: new repositories get it, existing ones switch to it, and what
it writes is read back by stock zlib and verifies."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from rcds.publish.layout import Layout
from rcds.service.runner import ServiceThread

import servicekit as kit
from testkit import verify

REPO = "user1.example.org"
TEXT = b"#!/bin/sh\n# a script the service publishes\necho compressed\n" * 200


def setting(cfg_base: Path) -> str:
    return str(json.loads((cfg_base / "repos" / REPO / "repo.json").read_text())["compression"])


def file_objects(cfg_base: Path) -> list[bytes]:
    data = cfg_base / "repos" / REPO / "public" / "data"
    return [p.read_bytes() for p in data.rglob("*") if p.is_file() and len(p.name) == 38]


@pytest.mark.timeout(120)
def test_the_toml_compression_applies_to_new_and_existing_repositories(tmp_path: Path) -> None:
    base = tmp_path / "srv"
    cfg = kit.config(base, repositories=(REPO,))
    assert cfg.compression == "isal:2"  # the service's default
    first = kit.tarball({"bin/run.sh": TEXT}, seed="one")
    with ServiceThread(cfg) as st:
        assert setting(base) == "isal:2"
        api = kit.Api(st.url)
        api.publish_and_wait(first)
        api.close()
    isal_objects = file_objects(base)
    assert TEXT in {zlib.decompress(o) for o in isal_objects}
    # the operator changes the TOML: the repository switches at the next start
    cfg = kit.config(base, repositories=(REPO,), extra='compression = "zlib:9"')
    second = kit.tarball({"bin/run.sh": TEXT}, seed="two")
    with ServiceThread(cfg) as st:
        assert setting(base) == "zlib:9"
        api = kit.Api(st.url)
        api.publish_and_wait(second)
        assert api.get("exists", kit.cid_of(first)).text.startswith("PRESENT:")  # old objects still serve
        api.close()
    after = file_objects(base)
    assert set(isal_objects) <= set(after)
    assert zlib.compress(TEXT, 9) in after  # the same content, stored anew by zlib 9
    s0 = st.service.slots[0].s0
    assert verify(s0).revision >= 2
    assert Layout(base / "repos" / REPO, REPO).load_settings().compression == "zlib:9"
