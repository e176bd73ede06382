"""The status page as one self-contained HTML document (inline CSS and SVG, no scripts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from html import escape

from rcds.service.activity import BUCKET_SECONDS, HOURS, Running
from rcds.service.page.snapshot import PageData
from rcds.service.page.svg import fmt_bytes, fmt_count, fmt_seconds, plot

REFRESH_SECONDS = 15
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#f6f8fa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef} td.num{text-align:right;font-variant-numeric:tabular-nums}
.cid{font-family:monospace;word-break:break-all;max-width:36em}
.bad{color:#b00} .ok{color:#070} .muted{color:#777}
.bar{width:12em;height:.9em;background:#ddd;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#1f6feb}
.plots{display:flex;flex-wrap:wrap;gap:12px} svg text{font:11px sans-serif;fill:#333}
svg .ptitle{font:bold 12px sans-serif}
"""


def age(seconds: float) -> str:
    """``12 s``, ``5 min``, ``3 h``, ``2 d``."""
    s = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def when(t: float) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """An HTML table; cells are given already escaped (so they may hold markup)."""
    body = ["<tr>" + "".join(r) + "</tr>" for r in rows]
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def td(text: object, cls: str = "") -> str:
    """One escaped cell."""
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def progress(r: Running, state: str) -> str:
    """A progress bar cell: bytes done of the total (the size, for a queued upload)."""
    if state == "queued":
        return td(f"{fmt_bytes(r.size or 0)} to publish")
    done = r.done()
    if not r.size:
        return td(fmt_bytes(done))
    pct = min(100.0, 100.0 * done / r.size)
    return (
        f'<td><span class="bar"><span style="width:{pct:.0f}%"></span></span> '
        f"{pct:.0f}% of {escape(fmt_bytes(r.size))}</td>"
    )


def render(d: PageData, title: str = "rcds publishing service") -> str:
    """The whole page."""
    now = d.now
    means = [(t, mean) for t, mean, _lo, _hi in d.latency]
    ranges = [(t, lo, hi) for t, _mean, lo, hi in d.latency]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">as of {when(now)}; {d.totals.get("published", 0)} published, '
        f"{d.totals.get('failed', 0)} failed, {fmt_bytes(d.totals.get('ingested_bytes', 0))} ingested "
        f"since start; this page refreshes every {REFRESH_SECONDS} s</p>",
        '<h2 id="repositories">Repositories</h2>',
        table(
            ["repository", "kind", "revision", "size", "CIDs", "last publish"],
            (
                [
                    td(r.name),
                    td("own" if r.own else "replica"),
                    td(r.revision, "num"),
                    td(fmt_bytes(r.size), "num"),
                    td(r.cids, "num"),
                    td(f"{age(now - r.published_at)} ago" if r.published_at else "never"),
                ]
                for r in d.repositories
            ),
            "no repositories",
        ),
        f'<h2 id="queue">Queue: {d.queued} waiting, {len(d.publishing)} publishing, '
        f"{len(d.receiving)} uploading</h2>",
        table(
            ["state", "CID", "repository", "progress", "since"],
            (
                [
                    td(state),
                    td(r.cid, "cid"),
                    td(r.repository or ""),
                    progress(r, state),
                    td(age(now - r.started)),
                ]
                for state, group in (
                    ("publishing", d.publishing),
                    ("uploading", d.receiving),
                    ("queued", d.waiting),
                )
                for r in group
            ),
            "nothing in flight",
        ),
        '<h2 id="plots">Last hours</h2><div class="plots">',
        plot(
            means,
            start=now - HOURS * 3600,
            end=now,
            title=f"publish latency, upload end to PRESENT (mean and range per {BUCKET_SECONDS:.0f} s)",
            style="dots",
            fmt=fmt_seconds,
            plot_id="plot-latency",
            ranges=ranges,
        ),
        plot(
            _carried(d.queue_length, now),
            start=now - HOURS * 3600,
            end=now,
            title="queue length",
            style="steps",
            fmt=fmt_count,
            plot_id="plot-queue",
        ),
        plot(
            d.ingested,
            start=now - HOURS * 3600,
            end=now,
            title=f"bytes ingested per {BUCKET_SECONDS:.0f} s",
            style="bars",
            fmt=fmt_bytes,
            plot_id="plot-ingested",
            bar_width=BUCKET_SECONDS,
        ),
        "</div>",
        '<h2 id="recent">Recent publishes</h2>',
        table(
            ["finished", "CID", "repository", "revision", "size", "latency", "by"],
            (
                [
                    td(when(e.finished)),
                    td(e.cid, "cid"),
                    td(e.repository),
                    td(e.revision, "num"),
                    td(fmt_bytes(e.size), "num"),
                    td(f"{e.latency:.2f} s", "num"),
                    td(e.identity),
                ]
                for e in d.recent
            ),
            "no publishes since the server started",
        ),
        '<h2 id="failures">Recent failures</h2>',
        table(
            ["at", "CID", "repository", "reason"],
            (
                [td(when(f.at)), td(f.cid, "cid"), td(f.repository or ""), td(f.reason, "bad")]
                for f in d.failures
            ),
            "no failures since the server started",
        ),
        f'<h2 id="cleanup">Cleanup (CIDs unused for {d.maxdays} days)</h2>',
        table(["repository", "next run", "last run", "result"], _cleanup_rows(d), "no own repositories"),
        '<h2 id="replicas">Partner and replicas</h2>',
        _partner(d),
        "</body></html>",
    ]
    return "\n".join(parts)


def _carried(points: list[tuple[float, float]], now: float) -> list[tuple[float, float]]:
    """Queue samples from the window's start (0 before the first sample; the plot carries each
    value to the next)."""
    start = now - HOURS * 3600
    if not points or points[0][0] > start:
        return [(start, 0.0), *points]
    return points


def _cleanup_rows(d: PageData) -> Iterable[list[str]]:
    for name, at in d.next_cleanups.items():
        ev = d.cleanups.get(name)
        if ev is None:
            last, result = td("not since start"), td("")
        elif ev.error:
            last, result = td(when(ev.at)), td(f"failed: {ev.error}", "bad")
        else:
            last = td(when(ev.at))
            result = td(
                f"removed {ev.removed} CIDs, kept {ev.kept}, dropped {ev.stamps_dropped} stamps, "
                f"freed {fmt_bytes(ev.bytes_freed)}"
            )
        yield [td(name), td(f"{when(at)} (in {age(at - d.now)})"), last, result]


def _partner(d: PageData) -> str:
    if d.partner_url is None:
        return '<p class="muted">no partner server configured</p>'
    if d.partner_last_pull is None:
        state = "not pulled yet"
    else:
        reach = "answered" if d.partner_reachable else "did not list repositories (unreachable?)"
        state = f"last pull {age(d.now - d.partner_last_pull)} ago; partner {reach}"
    head = f"<p>partner {escape(d.partner_url)}: {escape(state)}</p>"
    rows = (
        [td(r.name), td("ok" if r.ok else "failed", "ok" if r.ok else "bad"), td(r.detail)]
        for r in d.replicas
    )
    return head + table(["replica", "state", "detail"], rows, "no replicas yet")
