"""The hostile-tarball corpus: every case is refused (or safely sanitised) and changes nothing."""

from __future__ import annotations

import io
import stat

import pytest

from rcds.errors import InputError
from rcds.publish.policy import Limits
from rcds.testing.hostile_tars import CASES

from testkit import verify

TARGET = "/sw/grp/cid"


def test_the_corpus_is_big_enough():
    assert len([c for c in CASES if c.policy == "reject"]) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(any_repo, view_factory, case):
    repo = any_repo
    before = repo.store.get(".cvmfspublished")
    limits = Limits(max_bytes=case.max_bytes) if case.max_bytes else Limits()
    data = case.build()
    if case.policy == "reject":
        with pytest.raises(InputError) as info:
            repo.ingest_tar(io.BytesIO(data), TARGET, limits=limits)
        if case.member is not None:
            assert case.member in str(info.value), f"message does not name {case.member!r}: {info.value}"
        assert repo.store.get(".cvmfspublished") == before
        assert verify(repo).revision == 0
        return
    repo.ingest_tar(io.BytesIO(data), TARGET, limits=limits)
    v = view_factory(repo)
    assert case.sanitized is not None
    for rel, want in case.sanitized.items():
        got = v.lookup(f"{TARGET}/{rel}")
        assert stat.S_IMODE(got.mode) == want.mode, rel
        assert (want.type == "dir") == got.is_dir, rel
        if want.type == "file":
            assert got.size == want.size, rel
    verify(repo)
