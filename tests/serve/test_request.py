"""Request-head parsing (rcds.serve.request) and the fast path of parse_target."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcds.errors import NotFoundError
from rcds.serve import handler
from rcds.serve.request import MAX_HEAD, MAX_REQUEST_LINE, Request, next_request


def test_several_heads_in_one_buffer() -> None:
    buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.0\r\n\r\nGET /c HTTP/1.1\r\nHo"
    first, pos = next_request(buf, 0)
    second, pos2 = next_request(buf, pos)
    assert first == Request("GET", "/a", True, http11=True)
    assert second == Request("HEAD", "/b", False)
    assert next_request(buf, pos2) == (None, pos2)  # incomplete: wait for more


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nconnection: Keep-Alive, TE\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET /\r\n\r\n", False),
        (b"GET / HTTP/1.1\nX: y\n\n", True),
    ],
)
def test_keep_alive_decisions(head: bytes, keep_alive: bool) -> None:
    request, pos = next_request(head, 0)
    assert request is not None and request.error is None
    assert (request.keep_alive, pos) == (keep_alive, len(head))


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /x HTTP/3.0\r\n\r\n", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
        (b"GET /x HTTP/1.x\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GET /x FTP/1.1\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GARBAGE\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"HEAD /x\r\n\r\n", HTTPStatus.BAD_REQUEST),
        (b"GET /" + b"x" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n", HTTPStatus.REQUEST_URI_TOO_LONG),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD // 6), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
    ],
)
def test_refused_heads(head: bytes, status: HTTPStatus) -> None:
    request, pos = next_request(head, 0)
    assert request is not None and request.error == status and not request.keep_alive
    assert pos == len(head)


def test_empty_request_line_and_expect() -> None:
    assert next_request(b"\r\nGET / HTTP/1.1\r\n\r\n", 0) == (None, -1)
    request, _ = next_request(b"GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", 0)
    assert request is not None and request.expect_continue
    request, _ = next_request(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", 0)
    assert request is not None and not request.expect_continue


def general(raw: str) -> handler.Target | None:
    try:
        return handler._parse_general(raw)
    except NotFoundError:
        return None


def fast(raw: str) -> handler.Target | None:
    try:
        return handler.parse_target(raw)
    except NotFoundError:
        return None


_CHARS = "abcdef0123456789./%_-~+=,@?#:Ccvmfsdata"


@given(
    st.lists(st.text(_CHARS, max_size=12), min_size=1, max_size=4),
    st.sampled_from(["/cvmfs/r.example.org/", "/cvmfs/r/data/", "/cvmfs/.r/", "/cvmfs/r/", "/x/"]),
)
def test_fast_path_agrees_with_the_general_rules(parts: list[str], prefix: str) -> None:
    raw = prefix + "/".join(parts)
    assert fast(raw) == general(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/cvmfs/r.example.org/data/ab/" + "cd" * 19,
        "/cvmfs/r.example.org/data/ab/.hidden",
        "/cvmfs/r.example.org/data/AB/x",
        "/cvmfs/r.example.org/data/txn/x",
        "/cvmfs/r.example.org/.cvmfspublished",
        "/cvmfs/r.example.org/.cvmfs",
        "/cvmfs/r.example.org/.cvmfs" + "x" * 249,
        "/cvmfs/r.example.org/.cvmfs" + "x" * 250,
        "/cvmfs/r.example.org/data/ab/" + "x" * 255,
        "/cvmfs/r.example.org/data/ab/" + "x" * 256,
        "/cvmfs/-r/data/ab/x",
        "/cvmfs/r..x/data/ab/x",
        "/cvmfs/r-.x/.cvmfspublished",
        "/cvmfs/r.x./data/ab/x",
        "/cvmfs/" + "r" * 253 + "/.cvmfspublished",
        "/cvmfs/" + "r." * 126 + "rr/.cvmfspublished",
        "/cvmfs/" + "r" * 256 + "/.cvmfspublished",
    ],
)
def test_fast_path_edges(raw: str) -> None:
    assert fast(raw) == general(raw)
