"""Running a :class:`~rcds.notify.broker.Broker` on its own (``rcds notify serve``), or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from aiohttp import web

from rcds.errors import RcdsError
from rcds.notify.broker import Broker
from rcds.serving_thread import ServingThread


def broker_app(broker: Broker) -> web.Application:
    """An application serving only the broker's routes."""
    app = web.Application(client_max_size=1 << 20)
    broker.attach(app)
    return app


async def serve_broker(
    broker: Broker,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
) -> None:
    """Serve ``broker`` on ``host:port`` until ``stop`` is set (or SIGINT/SIGTERM with ``signals``)."""
    runner = web.AppRunner(broker_app(broker), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RcdsError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    stop = stop or asyncio.Event()
    if signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    if ready is not None:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{bound}")
    try:
        await stop.wait()
    finally:
        broker.close()
        await runner.cleanup()


class BrokerThread(ServingThread):
    """A broker serving from a background thread of this process (tests, benches, embedding).

    ``url`` is the base URL (``http://127.0.0.1:PORT``); :meth:`stop` aborts all subscriptions.
    """

    def __init__(self, broker: Broker | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.broker = broker or Broker()

        async def run(ready: Callable[[str], None], stop: asyncio.Event) -> None:
            await serve_broker(self.broker, host, port, ready=ready, stop=stop, signals=False)

        super().__init__(run, name="rcds-broker", what="the notification broker")

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.url.rsplit(":", 1)[1])
