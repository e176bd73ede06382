"""The pubapi web application: routes, error mapping, TLS, and running it with the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from rcds.errors import AuthError, InputError, LockedError, NotFoundError, RcdsError, StorageError
from rcds.service.api import config, exists, metrics, page, ping, publish, status, update
from rcds.service.api.context import APP_KEY, ApiContext, context
from rcds.service.api.replies import error
from rcds.service.auth.authenticator import Authenticator
from rcds.service.auth.identity import Authorizer
from rcds.service.auth.tls import server_context
from rcds.service.auth.truststore import TrustStore
from rcds.service.core import Service
from rcds.service.spool import NoSpaceError, StalledError, TooLargeError

log = logging.getLogger("rcds.service.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: dict[str, tuple[tuple[str, ...], Handler]] = {
    "ping": (("GET", "HEAD"), ping.handle),
    "config": (("GET", "HEAD"), config.handle),
    "exists": (("GET", "HEAD"), exists.handle),
    "update": (("GET", "POST"), update.handle),
    "status": (("GET", "HEAD"), status.handle),
    "publish": (("POST", "PUT"), publish.handle),
}


def _status_of(exc: RcdsError) -> int:
    if isinstance(exc, AuthError):
        return exc.status
    for cls, code in (
        (TooLargeError, 413),
        (StalledError, 408),
        (NoSpaceError, 507),
        (InputError, 400),
        (NotFoundError, 404),
        (LockedError, 503),
        (StorageError, 507),
    ):
        if isinstance(exc, cls):
            return code
    return 500


PAGES: dict[str, Handler] = {"/status": page.handle, "/metrics": metrics.handle}


def _verb(request: web.Request) -> str:
    """The metric label of a request: its pubapi verb or page, ``other`` for anything else."""
    verb = request.match_info.get("verb")
    if verb is not None:
        return verb if verb in ROUTES else "other"
    return request.path.lstrip("/") if request.path in PAGES else "other"


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests and their latencies per verb, method and status; bytes in and out."""
    start = time.monotonic()
    status = 500
    sent = 0
    try:
        resp = await handler(request)
        status = resp.status
        sent = getattr(resp, "content_length", None) or 0
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        method = request.method if request.method in ("GET", "HEAD", "POST", "PUT") else "other"
        received = int(getattr(request.content, "total_bytes", 0) or 0)
        context(request).service.telemetry.api.observe(
            _verb(request), method, status, time.monotonic() - start, received, sent
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn rcds errors into status codes with a one-line reason."""
    try:
        return await handler(request)
    except RcdsError as exc:
        code = _status_of(exc)
        headers = {"WWW-Authenticate": 'Bearer realm="rcds"'} if code == 401 else None
        if code >= 500:
            log.error("%s %s: %s", request.method, request.path, exc)
        resp = error(request, code, str(exc), headers)
        if code in (408, 413, 507):
            resp.force_close()  # do not read the rest of a refused upload
        return resp
    except web.HTTPException:
        raise
    except Exception:  # a bug or an unexpected OSError: still a one-line answer, details in the log
        log.exception("%s %s failed", request.method, request.path_qs)
        return error(request, 500, "internal server error; the server log has the details")


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route ``/pubapi/<verb>`` with today's rules, plus correct methods."""
    verb = request.match_info["verb"]
    route = ROUTES.get(verb)
    if route is None:
        return error(request, 404, "Unrecognized api")
    methods, handler = route
    if request.method not in methods:
        return error(request, 405, f"{verb} takes {' or '.join(methods)}", {"Allow": ", ".join(methods)})
    return await handler(request)


def make_app(service: Service, authenticator: Authenticator | None = None) -> web.Application:
    """The aiohttp application for a service."""
    app = web.Application(middlewares=[measure, errors], client_max_size=1 << 20)
    app[APP_KEY] = ApiContext(
        service,
        authenticator or Authenticator.from_config(service.config),
        Authorizer(service.config.auth.acl),
    )
    app.router.add_route("*", "/pubapi/{verb}", dispatch)
    if service.broker is not None:
        service.broker.attach(app)
    for path, handler in PAGES.items():
        app.router.add_route("GET", path, handler)
    app.router.add_route("GET", "/", _to_status)
    return app


async def _to_status(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/status")


def tls_context(service: Service) -> object | None:
    """The server TLS context from the configuration (None for plain HTTP)."""
    tls = service.config.tls
    if tls is None:
        return None
    trust = TrustStore.load(tls.ca_dir, tls.ca_file) if (tls.ca_dir or tls.ca_file) else None
    return server_context(tls.cert_file, tls.key_file, trust)


async def serve(
    service: Service, *, ready: Callable[[str], None] | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the web API until ``stop`` is set (or SIGINT/SIGTERM)."""
    app = make_app(service)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listen = service.config.listen
    ctx = tls_context(service)
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=ctx)  # type: ignore[arg-type]
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else listen.port
    scheme = "https" if ctx is not None else "http"
    if ready is not None:
        ready(f"{scheme}://{listen.host}:{port}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
