"""``GET /status``: the status page (HTML; JSON with ``Accept: application/json``).

Who may see it: any authenticated identity, as for ``exists`` and ``status`` (which already tell
any authenticated client where a CID is and why its publish failed); credential-less loopback
requests too unless ``auth.require_auth_on_loopback`` is set.
"""

from __future__ import annotations

from aiohttp import web

from rcds.service.api.context import context
from rcds.service.api.replies import TEXT_HEADERS, wants_json
from rcds.service.page.render import render
from rcds.service.page.snapshot import as_json, collect


async def handle(request: web.Request) -> web.Response:
    """Render the page from the service's in-memory state."""
    ctx = context(request)
    await ctx.identity(request)
    data = collect(ctx.service)
    if wants_json(request):
        return web.json_response(as_json(data), headers=TEXT_HEADERS)
    return web.Response(text=render(data), content_type="text/html", charset="utf-8", headers=TEXT_HEADERS)
