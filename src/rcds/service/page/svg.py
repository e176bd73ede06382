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
    sx, sy = pw / span, ph / top
    shown = [(LEFT + (t - start) * sx, TOP + ph - v * sy) for t, v in points if start <= t <= end]
    if not shown:
        out.append(
            f'<text x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle" '
            'fill="#888">no data yet</text>'
        )
    elif style == "dots":  # one path each: zero-length strokes with round caps are dots
        spans = [
            f"M{LEFT + (t - start) * sx:.1f} {TOP + ph - lo * sy:.1f}V{TOP + ph - hi * sy:.1f}"
            for t, lo, hi in ranges
            if start <= t <= end and hi > lo
        ]
        if spans:
            out.append(f'<path class="range" stroke="{RANGE_COLOR}" stroke-width="3" d="{"".join(spans)}"/>')
        dots = "".join(f"M{px:.1f} {py:.1f}h0" for px, py in shown)
        out.append(
            f'<path class="data" stroke="{COLOR}" stroke-width="6" stroke-linecap="round" d="{dots}"/>'
        )
    elif style == "bars":
        bw = max(bar_width * sx, 2.0)
        base = TOP + ph
        bars = "".join(f"M{px:.1f} {base}V{min(py, base - 2):.1f}h{bw:.1f}V{base}z" for px, py in shown)
        out.append(f'<path class="data" fill="{COLOR}" d="{bars}"/>')
    else:
        steps = []
        for i, (px, py) in enumerate(shown):
            nxt = shown[i + 1][0] if i + 1 < len(shown) else LEFT + pw
            steps.append(f"{px:.1f},{py:.1f} {nxt:.1f},{py:.1f}")
        out.append(
            f'<polyline class="data" fill="none" stroke="{COLOR}" stroke-width="3" '
            f'points="{" ".join(steps)}"/>'
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
