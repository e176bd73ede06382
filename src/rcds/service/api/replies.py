"""Replies in today's text format (``OK``, ``PRESENT:<path>``, ``MISSING``) or JSON on request."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

TEXT_HEADERS = {"Cache-Control": "max-age=0"}


def wants_json(request: web.Request) -> bool:
    """True when the client asks for ``application/json``."""
    return "application/json" in request.headers.get("Accept", "")


def reply(request: web.Request, text: str, data: Mapping[str, object], status: int = 200) -> web.Response:
    """A success (or informative) reply: ``text`` + newline, or ``data`` as JSON."""
    if wants_json(request):
        return web.json_response(dict(data), status=status, headers=TEXT_HEADERS)
    return web.Response(text=text + "\n", status=status, content_type="text/plain", headers=TEXT_HEADERS)


def error(
    request: web.Request, status: int, reason: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An error with a one-line reason (400 bodies keep today's ``Bad request:`` prefix)."""
    reason = " ".join(reason.split())
    text = f"Bad request: {reason}" if status == 400 else reason
    hdrs = {**TEXT_HEADERS, **(headers or {})}
    if wants_json(request):
        return web.json_response({"error": reason, "status": status}, status=status, headers=hdrs)
    return web.Response(text=text + "\n", status=status, content_type="text/plain", headers=hdrs)


def found(request: web.Request, cid: str, repository: str, path: str) -> web.Response:
    """``PRESENT:/cvmfs/<repo>/<prefix>/<cid>``."""
    return reply(
        request, f"PRESENT:{path}", {"status": "PRESENT", "cid": cid, "repository": repository, "path": path}
    )


def missing(request: web.Request, cid: str) -> web.Response:
    """``MISSING``."""
    return reply(request, "MISSING", {"status": "MISSING", "cid": cid})
