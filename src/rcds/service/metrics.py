"""The service's state in the Prometheus text format (``GET /pubapi/metrics``), written by hand.

Built from :meth:`rcds.service.core.Service.health`; the figures that matter for a service that
runs for months are the whitelists' expiry and the re-sign failures, so an alert can fire days
before clients would refuse a repository.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

_HELP: dict[str, tuple[str, str]] = {
    "rcds_whitelist_expiry_timestamp_seconds": ("gauge", "When the whitelist expires (Unix time)."),
    "rcds_whitelist_seconds_left": ("gauge", "Seconds until the whitelist expires (negative: expired)."),
    "rcds_whitelist_needs_resign": ("gauge", "1 when less than a third of the validity is left or expired."),
    "rcds_whitelist_resigns_total": ("counter", "Whitelists re-signed by this process."),
    "rcds_whitelist_resign_failures_total": (
        "counter",
        "Checks at which a due whitelist could not be re-signed (master key missing or unusable).",
    ),
    "rcds_problems": ("gauge", "Problems listed by /pubapi/status (0 when all is well)."),
    "rcds_publish_queue_length": ("gauge", "Uploads waiting for a repository."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _rows(entries: Iterable[Mapping[str, object]], role: str) -> Iterable[tuple[str, str, float]]:
    for e in entries:
        labels = f'repository="{_label(str(e["repository"]))}",role="{role}"'
        expires = e.get("expires_ts")
        if isinstance(expires, int | float):
            yield "rcds_whitelist_expiry_timestamp_seconds", labels, float(expires)
        yield "rcds_whitelist_seconds_left", labels, float(e["seconds_left"])  # type: ignore[arg-type]
        yield "rcds_whitelist_needs_resign", labels, 0.0 if e["state"] == "ok" else 1.0
        if role == "own":
            yield "rcds_whitelist_resigns_total", labels, float(e.get("resigns", 0))  # type: ignore[arg-type]
            yield "rcds_whitelist_resign_failures_total", labels, float(e.get("resign_failures", 0))  # type: ignore[arg-type]


def render(health: Mapping[str, object]) -> str:
    """The Prometheus exposition text of a health mapping."""
    rows: list[tuple[str, str, float]] = []
    own: Sequence[Mapping[str, object]] = health.get("whitelists", [])  # type: ignore[assignment]
    replicas: Sequence[Mapping[str, object]] = health.get("replica_whitelists", [])  # type: ignore[assignment]
    rows += _rows(own, "own")
    rows += _rows(replicas, "replica")
    problems: Sequence[object] = health.get("problems", [])  # type: ignore[assignment]
    rows.append(("rcds_problems", "", float(len(problems))))
    rows.append(("rcds_publish_queue_length", "", float(health.get("queued", 0))))  # type: ignore[arg-type]
    lines = []
    for name, (kind, text) in _HELP.items():
        mine = [r for r in rows if r[0] == name]
        if not mine:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for _, labels, value in mine:
            lines.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")
    return "\n".join(lines) + "\n"
