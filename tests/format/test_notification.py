"""The notification codec and the event-stream framing: stock's wire format, strict parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from rcds.errors import InputError, IntegrityError
from rcds.format.notification import (
    Activity,
    build_subscription,
    format_timestamp,
    parse_activity,
    parse_subscription,
    parse_timestamp,
)
from rcds.format.sse import EventDecoder, encode_event
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0

from testkit import NAME

STOCK_FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Stratum0:
    """One repository for the whole module (creating keys is the slow part)."""
    root = tmp_path_factory.mktemp("notif") / "repo"
    create_repository(root, Settings(name=NAME))
    return Stratum0(root, NAME)


def test_timestamp_is_stocks_format() -> None:
    # 2026-12-07 07:50:01 UTC
    t = 1796629801
    assert format_timestamp(t) == "07 Dec 2026 07:50:01"
    assert parse_timestamp("07 Dec 2026 07:50:01") == t
    assert parse_timestamp("2026-12-07T07:50:01Z") is None
    assert parse_timestamp("07 Foo 2026 07:50:01") is None


def test_activity_round_trip(repo: Stratum0) -> None:
    raw = repo.store.get(".cvmfspublished")
    a = Activity.of(raw, now=1796629801)
    line = a.to_json()
    assert b"\n" not in line
    obj = json.loads(line)
    assert obj == {
        "version": 1,
        "timestamp": "07 Dec 2026 07:50:01",
        "type": "activity",
        "repository": repo.name,
        "manifest": base64.b64encode(raw).decode(),
    }
    back = parse_activity(line)
    assert back == a
    assert back.signed_manifest().manifest.revision == 0


def test_stock_spelling_with_spaces_parses(repo: Stratum0) -> None:
    raw = repo.store.get(".cvmfspublished")
    # what stock's Activity::ToJSONString writes, spaces and all
    text = (
        '{ "version" : 1, "timestamp" : "07 Dec 2026 07:50:01", "type" : "activity", '
        f'"repository" : "{repo.name}", "manifest" : "{base64.b64encode(raw).decode()}"}}'
    )
    assert parse_activity(text).manifest == raw


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"type": "other"}, "'type' must be 'activity'"),
        ({"version": 2}, "version 2 is not supported"),
        ({"version": True}, "'version' must be the number 1"),
        ({"version": "1"}, "'version' must be the number 1"),
        ({"timestamp": 5}, "'timestamp' must be a string"),
        ({"repository": "../etc"}, "repository name"),
        ({"repository": None}, "repository name"),
        ({"manifest": "not base64!"}, "not valid base64"),
        ({"manifest": ""}, "'manifest' is empty"),
    ],
)
def test_bad_activities_are_refused_clearly(repo: Stratum0, change: dict[str, object], needle: str) -> None:
    obj = json.loads(Activity.of(repo.store.get(".cvmfspublished")).to_json())
    obj.update(change)
    with pytest.raises(InputError, match=needle):
        parse_activity(json.dumps(obj))


def test_missing_key_and_non_objects_are_refused(repo: Stratum0) -> None:
    obj = json.loads(Activity.of(repo.store.get(".cvmfspublished")).to_json())
    del obj["manifest"]
    with pytest.raises(InputError, match="'manifest' must be a string"):
        parse_activity(json.dumps(obj))
    for bad in (b"[1]", b"nope", b"\xff\xfe", b'"x"'):
        with pytest.raises(InputError):
            parse_activity(bad)
    with pytest.raises(InputError, match="at most"):
        parse_activity(b" " * (2 << 20))


def test_manifest_must_name_the_repository(repo: Stratum0) -> None:
    raw = repo.store.get(".cvmfspublished")
    a = Activity.of(raw)._replace(repository="other.example.org")
    with pytest.raises(IntegrityError, match=r"is for 'test\.example\.org'"):
        parse_activity(a.to_json()).signed_manifest()
    with pytest.raises(IntegrityError):
        a._replace(manifest=b"garbage").signed_manifest()
    with pytest.raises(InputError, match="cannot announce"):
        Activity.of(b"not a manifest")


def test_stock_manifest_fixture_announces() -> None:
    published = sorted(STOCK_FIXTURES.rglob(".cvmfspublished"))
    if not published:
        pytest.skip("no stock fixture repositories on this machine")
    a = Activity.of(published[0].read_bytes())
    assert parse_activity(a.to_json()).signed_manifest().manifest.repository_name == a.repository


def test_subscription() -> None:
    assert build_subscription("sw.example.org") == b'{"version":1,"repository":"sw.example.org"}'
    assert parse_subscription(b'{"version":1,"repository":"sw.example.org"}') == "sw.example.org"
    assert parse_subscription('{ "version" : 1, "repository" : "a.b" }') == "a.b"
    for bad in (
        b"{}",
        b'{"version":1}',
        b'{"version":2,"repository":"a.b"}',
        b'{"version":1,"repository":"a b"}',
    ):
        with pytest.raises(InputError):
            parse_subscription(bad)
    with pytest.raises(InputError):
        build_subscription("a/b")


def test_event_framing_and_decoder() -> None:
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    with pytest.raises(InputError):
        encode_event(b"two\nlines")
    stream = b"data: one\n\n: comment\n\nevent: x\ndata:two\r\n\r\ndata: a\ndata: b\r\rdata: tail"
    d = EventDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):  # byte by byte: every split point
        got += d.feed(stream[i : i + 1])
    assert got == [b"one", b"two", b"a\nb"]
    assert d.feed(b"\n\n") == [b"tail"]
    d2 = EventDecoder(max_line=100)
    with pytest.raises(InputError, match="exceeds"):
        d2.feed(b"data: " + b"x" * 200)
