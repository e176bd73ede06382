"""``GET /pubapi/exists?cid=C``: ``PRESENT:<path>`` or ``MISSING`` over all repositories."""

from __future__ import annotations

from aiohttp import web

from rcds.service.api.context import cid_param, context
from rcds.service.api.replies import found, missing


async def handle(request: web.Request) -> web.Response:
    """Look the CID up in every own and replicated repository."""
    ctx = context(request)
    await ctx.identity(request)
    cid = cid_param(request, "exists")
    where = ctx.service.exists(cid.value)
    return found(request, cid.value, where.repository, where.path) if where else missing(request, cid.value)
