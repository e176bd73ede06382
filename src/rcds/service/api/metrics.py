"""``GET /metrics``: the service's metrics in the Prometheus text format.

Same access rule as the status page: any authenticated identity (Prometheus sends a bearer token
or a client certificate), or credential-less loopback unless ``require_auth_on_loopback`` is set.
"""

from __future__ import annotations

from aiohttp import web

from rcds.metrics.exposition import CONTENT_TYPE, render
from rcds.service.api.context import context


async def handle(request: web.Request) -> web.Response:
    """Render the registry."""
    ctx = context(request)
    await ctx.identity(request)
    body = render(ctx.service.telemetry.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "max-age=0"})
