"""``GET /pubapi/update?cid=C``: like exists, and stamps the CID as used."""

from __future__ import annotations

from aiohttp import web

from rcds.service.api.context import cid_param, context
from rcds.service.api.replies import found, missing


async def handle(request: web.Request) -> web.Response:
    """Stamp the CID if it is published anywhere."""
    ctx = context(request)
    identity = await ctx.identity(request)
    cid = cid_param(request, "update")
    ctx.authorizer.check(identity, cid)
    where = ctx.service.update(cid.value)
    return found(request, cid.value, where.repository, where.path) if where else missing(request, cid.value)
