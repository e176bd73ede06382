"""``GET /pubapi/ping``: liveness, open to all."""

from __future__ import annotations

from aiohttp import web

from rcds.service.api.replies import reply


async def handle(request: web.Request) -> web.Response:
    """``OK``."""
    return reply(request, "OK", {"status": "OK"})
