"""What every handler needs: the service, authentication, authorization, and request parsing."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiohttp import web

from rcds.clock import utc_now
from rcds.errors import InputError
from rcds.service.auth.authenticator import Authenticator
from rcds.service.auth.identity import Authorizer, Identity
from rcds.service.auth.tls import peer_chain
from rcds.service.cid import Cid, validate_cid
from rcds.service.core import Service
from rcds.service.spool import MAX_CID_LENGTH

APP_KEY: web.AppKey[ApiContext] = web.AppKey("rcds", None)


@dataclass
class ApiContext:
    """Shared state of the web application."""

    service: Service
    authenticator: Authenticator
    authorizer: Authorizer

    async def identity(self, request: web.Request) -> Identity:
        """Authenticate the request (token, then client certificate chain, then loopback)."""
        chain = []
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        if isinstance(ssl_obj, ssl.SSLObject):
            chain = peer_chain(ssl_obj)
        auth = request.headers.get("Authorization")
        remote = request.remote
        if not chain and not auth:
            return self.authenticator.authenticate(remote_addr=remote)
        now = utc_now(self.service.clock)  # token and certificate expiry on the service's clock
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            lambda: self.authenticator.authenticate(
                remote_addr=remote, authorization=auth, cert_chain=chain, now=now
            ),
        )


def context(request: web.Request) -> ApiContext:
    """The application's context."""
    return request.app[APP_KEY]


def cid_param(request: web.Request, verb: str) -> Cid:
    """The validated ``cid`` query parameter (first one wins, as today)."""
    values = request.query.getall("cid", [])
    if not values or not values[0]:
        raise InputError(f"{verb} with no cid")
    return validate_cid(values[0], max_length=MAX_CID_LENGTH)
