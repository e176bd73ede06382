"""A real headless Chromium driven over the DevTools protocol (``import browserkit``).

:func:`chromium` finds the browser (Debian's ``chromium``); :class:`Browser` starts it on a
loopback DevTools port with a private profile, no network access beyond loopback (every other
host name resolves to nothing) and no background services, and :meth:`Browser.visit` loads a
page, evaluates JavaScript in it and takes screenshots (PNG bytes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from rcds.testing.processes import stop_process

LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium() -> str | None:
    """The path of the Chromium binary, if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One tab, attached through a flat DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws = ws
        self.session = session
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (events meanwhile are kept in ``events``)."""
        msg_id = next(self._ids) + 1000
        await self.ws.send_str(
            json.dumps({"id": msg_id, "method": method, "params": params, "sessionId": self.session})
        )
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return dict(data.get("result", {}))
            self.events.append(data)

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for an event (or find it among those already received)."""
        for ev in self.events:
            if ev.get("method") == method:
                self.events.remove(ev)
                return ev
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(msg.data)
            if data.get("method") == method:
                return data
            self.events.append(data)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")

    async def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """A PNG of the viewport, or of ``clip`` (x, y, width, height in CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
            params["captureBeyondViewport"] = True
        res = await self.call("Page.captureScreenshot", **params)
        return base64.b64decode(res["data"])


class Browser:
    """A headless Chromium process; use as a context manager."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 2400) -> None:
        exe = chromium()
        if exe is None:
            raise RuntimeError("chromium is not installed (scripts/setup.sh installs it)")
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.endpoint = self._read_endpoint(30.0)

    def _read_endpoint(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            seen = self.log.read_bytes()
            m = LISTENING.search(seen)
            if m:
                return m.group(1).decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"chromium did not start: {seen[-2000:].decode('utf-8', 'replace')}")

    async def visit(self, url: str, width: int = 1280, height: int = 2400) -> tuple[Page, Any]:
        """Open ``url`` in a new tab and wait for its load event; returns the page (and the socket's
        session, closed by :func:`close_session`)."""
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(self.endpoint, max_msg_size=64 << 20)
        target = await _browser_call(ws, "Target.createTarget", url="about:blank")
        attached = await _browser_call(ws, "Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(ws, attached["sessionId"])
        await page.call("Page.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.call("Page.navigate", url=url)
        await page.wait_event("Page.loadEventFired")
        return page, session

    def close(self) -> None:
        """Stop the browser (its process only)."""
        stop_process(self.proc, 10)
        self._log_file.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _browser_call(ws: aiohttp.ClientWebSocketResponse, method: str, **params: Any) -> dict[str, Any]:
    msg_id = int(time.monotonic_ns() % 1_000_000)
    await ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
    while True:
        msg = await ws.receive(timeout=30)
        data = json.loads(msg.data)
        if data.get("id") == msg_id:
            if "error" in data:
                raise RuntimeError(f"{method}: {data['error']}")
            return dict(data.get("result", {}))


async def close_session(page: Page, session: aiohttp.ClientSession) -> None:
    """Close the tab's socket and HTTP session."""
    with contextlib.suppress(Exception):
        await page.ws.close()
    await session.close()


def run(coro: Any) -> Any:
    """Run a coroutine to completion (tests are synchronous)."""
    return asyncio.run(coro)
