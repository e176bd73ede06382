"""Small time-series plots as inline SVG, drawn on the server (no JavaScript, no fonts to fetch).

A plot covers ``[start, end]`` on the x axis (labelled in hours before ``end``) and 0..a rounded
maximum on the y axis; points are drawn as dots, a step line, or bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Literal

Style = Literal["dots", "steps", "bars"]
WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 24, 28
COLOR = "#1f6feb"
RANGE_COLOR = "#a8c7fa"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= ``value`` (1 for nothing to show)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def plot(
    points: Sequence[tuple[float, float]],
    *,
    start: float,
    end: float,
    title: str,
    style: Style,
    fmt: Callable[[float], str],
    plot_id: str,
    bar_width: float = 60.0,
    ranges: Sequence[tuple[float, float, float]] = (),
) -> str:
    """An ``<svg>`` element for ``points`` (time, value) between ``start`` and ``end``; ``ranges``
    (time, low, high) are drawn as light vertical lines behind dots."""
    span = max(end - start, 1.0)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max([v for _, v in points] + [hi for _, _, hi in ranges], default=0.0))

    def x(t: float) -> float:
        return LEFT + (min(max(t, start), end) - start) / span * pw

    def y(v: float) -> float:
        return TOP + ph - v / top * ph

    out = [
        f'<svg id="{plot_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
        f'<text x="{LEFT}" y="16" class="ptitle">{escape(title)}</text>',
    ]
    for i in range(5):  # y grid and labels
        v = top * i / 4
        yy = y(v)
        out.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + pw}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end">{escape(fmt(v))}</text>')
    hours = max(1, round(span / 3600))
    for i in range(hours + 1):  # x ticks, one per hour
        t = start + span * i / hours
        label = "now" if i == hours else f"-{hours - i}h"
        out.append(
            f'<line x1="{x(t):.1f}" y1="{TOP + ph}" x2="{x(t):.1f}" y2="{TOP + ph + 4}" stroke="#999"/>'
        )
        out.append(f'<text x="{x(t):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{label}</text>')
    shown = [(t, v) for t, v in points if start <= t <= end]
    if not shown:
        out.append(
            f'<text x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle" '
            'fill="#888">no data yet</text>'
        )
    elif style == "dots":
        if ranges:
            out.append(f'<g class="range" stroke="{RANGE_COLOR}" stroke-width="3">')
            out += [
                f'<line x1="{x(t):.1f}" y1="{y(lo):.1f}" x2="{x(t):.1f}" y2="{y(hi):.1f}"/>'
                for t, lo, hi in ranges
                if start <= t <= end and hi > lo
            ]
            out.append("</g>")
        out.append(f'<g class="data" fill="{COLOR}">')
        out += [f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3"/>' for t, v in shown]
        out.append("</g>")
    elif style == "bars":
        bw = max(bar_width / span * pw, 2.0)
        out.append(f'<g class="data" fill="{COLOR}">')
        for t, v in shown:
            h = max(ph - (y(v) - TOP), 2.0)
            out.append(f'<rect x="{x(t):.1f}" y="{TOP + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}"/>')
        out.append("</g>")
    else:
        coords = []
        for i, (t, v) in enumerate(shown):
            nxt = shown[i + 1][0] if i + 1 < len(shown) else end
            coords += [f"{x(t):.1f},{y(v):.1f}", f"{x(nxt):.1f},{y(v):.1f}"]
        out.append(
            f'<polyline class="data" fill="none" stroke="{COLOR}" stroke-width="3" '
            f'points="{" ".join(coords)}"/>'
        )
    out.append("</svg>")
    return "\n".join(out)


def fmt_seconds(v: float) -> str:
    """``0.5 s``, ``12 s``, ``2 min``."""
    if v >= 120:
        return f"{v / 60:g} min"
    return f"{v:g} s"


def fmt_bytes(v: float) -> str:
    """Bytes with a binary unit: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.3g} {unit}" if unit != "B" else f"{v:.0f} B"
        v /= 1024
    return f"{v:.3g} TiB"


def fmt_count(v: float) -> str:
    """A count (no decimals when whole)."""
    return f"{v:g}"
