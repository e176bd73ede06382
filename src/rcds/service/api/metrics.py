"""``GET /pubapi/metrics``: whitelist expiry, re-sign failures, problems, queue; open to all."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rcds.service.api.context import context
from rcds.service.api.replies import TEXT_HEADERS
from rcds.service.metrics import render


async def handle(request: web.Request) -> web.Response:
    """The metrics text (version 0.0.4 of the exposition format)."""
    svc = context(request).service
    health = await asyncio.get_running_loop().run_in_executor(None, svc.health)
    return web.Response(
        text=render(health),
        content_type="text/plain",
        headers={**TEXT_HEADERS, "X-Content-Type-Options": "nosniff"},
    )
