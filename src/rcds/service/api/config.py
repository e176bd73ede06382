"""``GET /pubapi/config``: the repositories CIDs may appear in, open to all."""

from __future__ import annotations

from aiohttp import web

from rcds.service.api.context import context
from rcds.service.api.replies import reply


async def handle(request: web.Request) -> web.Response:
    """``repos:a,b,...`` (own repositories first, then the partner's)."""
    ctx = context(request)
    repos = ctx.service.repositories()
    return reply(request, "repos:" + ",".join(repos), {"repos": repos, "prefix": ctx.service.config.prefix})
