"""``POST /pubapi/publish?cid=C`` with the tarball as body: spool it and queue it.

Replies ``OK`` when queued (or already being received or published), ``PRESENT:<path>`` when the
CID is published already (its stamp is touched and the body is not read).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from rcds.errors import InputError
from rcds.service.api.context import cid_param, context
from rcds.service.api.replies import found, reply
from rcds.service.core import Found
from rcds.service.spool import StalledError

log = logging.getLogger("rcds.service.api.publish")
BLOCK = 1 << 20
IDLE_TIMEOUT = 120.0
"""Seconds an upload may go without data before it is dropped (its CID is then free again)."""


async def handle(request: web.Request) -> web.Response:
    """Stream the body to the spool in constant memory, then queue it."""
    ctx = context(request)
    identity = await ctx.identity(request)
    cid = cid_param(request, "publish")
    ctx.authorizer.check(identity, cid)
    service = ctx.service
    loop = asyncio.get_running_loop()
    started = await loop.run_in_executor(
        None, service.begin_upload, cid.value, request.content_length, str(identity)
    )
    if isinstance(started, Found):
        return found(request, cid.value, started.repository, started.path)
    if started is None:
        return reply(request, "OK", {"status": "OK", "cid": cid.value, "state": "in progress"})
    upload = started
    committed = False
    try:
        while True:
            try:
                block = await asyncio.wait_for(request.content.read(BLOCK), IDLE_TIMEOUT)
            except TimeoutError:
                raise StalledError(
                    f"no data for {IDLE_TIMEOUT:g} s after {upload.size} bytes; send it again", cid.value
                ) from None
            except ConnectionError:  # the client went away: one log line, not a traceback
                log.info("upload of %s interrupted after %d bytes", cid.value, upload.size)
                raise InputError(f"upload interrupted after {upload.size} bytes", cid.value) from None
            if not block:
                break
            await loop.run_in_executor(None, upload.write, block)
        if request.content_length is not None and upload.size != request.content_length:
            raise InputError(
                f"upload ended after {upload.size} of {request.content_length} bytes; send it again",
                cid.value,
            )
        await loop.run_in_executor(None, service.finish_upload, upload, str(identity))
        committed = True
    finally:
        if not committed:
            service.abort_upload(upload)
    return reply(request, "OK", {"status": "OK", "cid": cid.value, "state": "queued"})
