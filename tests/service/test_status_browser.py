"""The status page in a real headless Chromium: it loads, shows the publish this test just made, and
its three plots render (a screenshot of each plot region has drawn pixels in the plot colour)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rcds.service.page.svg import COLOR
from rcds.service.runner import ServiceThread

import browserkit
import servicekit as kit

PLOTS = ("plot-latency", "plot-queue", "plot-ingested")


def colour_pixels(png: bytes, rgb: tuple[int, int, int], tolerance: int = 40) -> tuple[int, int, int]:
    """(pixels near ``rgb``, non-white pixels, all pixels) of a PNG."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    near = other = 0
    raw = img.tobytes()
    for i in range(0, len(raw), 3):
        r, g, b = raw[i], raw[i + 1], raw[i + 2]
        if abs(r - rgb[0]) + abs(g - rgb[1]) + abs(b - rgb[2]) <= tolerance:
            near += 1
        if (r, g, b) != (255, 255, 255):
            other += 1
    return near, other, img.width * img.height


@pytest.mark.timeout(120)
def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    if browserkit.chromium() is None:
        pytest.fail("chromium is not installed; run scripts/setup.sh (it installs the Debian package)")
    cfg = kit.config(tmp_path / "svc", repositories=("user1.example.org",))
    with ServiceThread(cfg) as st:
        api = kit.Api(st.url)
        cids = []
        for i in range(3):
            data = kit.tarball(seed=f"browser-{i}" * (200 * (i + 1)))
            cids.append(kit.cid_of(data))
            assert api.publish(cids[-1], data).text == "OK\n"
        for cid in cids:
            assert api.wait_status(cid).text.startswith("PUBLISHED:")

        async def look() -> dict[str, Any]:
            with browserkit.Browser(tmp_path / "chromium") as browser:
                page, session = await browser.visit(st.url + "/status")
                try:
                    out: dict[str, Any] = {
                        "title": await page.evaluate("document.title"),
                        "text": await page.evaluate("document.body.innerText"),
                        "plots": await page.evaluate(
                            "Array.from(document.querySelectorAll('svg.plot')).map(e => {"
                            " const r = e.getBoundingClientRect();"
                            " return {id: e.id, x: r.x, y: r.y + window.scrollY, w: r.width,"
                            " h: r.height, marks: e.querySelectorAll("
                            "'.data').length}; })"
                        ),
                        "page": await page.screenshot(),
                    }
                    out["shots"] = {
                        p["id"]: await page.screenshot(
                            {"x": p["x"], "y": p["y"], "width": p["w"], "height": p["h"]}
                        )
                        for p in out["plots"]
                    }
                    return out
                finally:
                    await browserkit.close_session(page, session)

        seen = browserkit.run(look())
        api.close()

    (tmp_path / "status-page.png").write_bytes(seen["page"])
    assert seen["title"] == "rcds publishing service"
    for cid in cids:
        assert cid in seen["text"], f"{cid} is not on the page"
    assert "Recent publishes" in seen["text"] and "user1.example.org" in seen["text"]
    plots = {p["id"]: p for p in seen["plots"]}
    assert set(plots) == set(PLOTS)
    for pid in PLOTS:
        p = plots[pid]
        assert p["w"] >= 600 and p["h"] >= 190, f"{pid} is not laid out: {p}"
        assert p["marks"] >= 1, f"{pid} has nothing drawn"
    rgb = tuple(int(COLOR[i : i + 2], 16) for i in (1, 3, 5))
    near = {pid: colour_pixels(seen["shots"][pid], rgb) for pid in PLOTS}
    for pid, (_blue, drawn, total) in near.items():
        assert total >= 600 * 190
        assert drawn > total // 100, f"{pid} looks blank: {drawn} of {total} pixels drawn"
    assert near["plot-latency"][0] >= 15, f"the publishes' median dot is missing: {near['plot-latency']}"
    assert near["plot-queue"][0] >= 300, f"the queue's line is missing: {near['plot-queue']}"
    assert near["plot-ingested"][0] >= 8, f"the ingested bar is missing: {near['plot-ingested']}"
    full = Image.open(io.BytesIO(seen["page"]))
    assert full.width >= 1200
