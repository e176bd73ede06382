"""``GET /pubapi/status?cid=C``: queued, publishing, published (with path) or failed (with why).

Without a CID: the service's own state, ``OK`` or ``WARNING: <problem>; <problem>`` (JSON: every
own and replicated whitelist with its expiry, re-signs and failures, the problems, the queue).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from rcds.service.api.context import cid_param, context
from rcds.service.api.replies import reply
from rcds.service.status import State


async def handle(request: web.Request) -> web.Response:
    """What this server knows of the CID (404 if nothing), or of itself without a CID."""
    ctx = context(request)
    await ctx.identity(request)
    if "cid" not in request.query:
        health = await asyncio.get_running_loop().run_in_executor(None, ctx.service.health)
        problems: list[str] = health["problems"]  # type: ignore[assignment]
        text = "OK" if not problems else "WARNING: " + "; ".join(problems)
        return reply(request, text, health)
    cid = cid_param(request, "status")
    st = ctx.service.status_of(cid.value)
    data = st.as_json()
    if st.state is State.PUBLISHED and st.repository:
        path = ctx.service.path_of(st.repository, cid.value)
        data["path"] = path
        return reply(request, f"PUBLISHED:{path}", data)
    if st.state is State.FAILED:
        return reply(request, f"FAILED:{st.reason}", data)
    return reply(request, st.state.value.upper(), data)
