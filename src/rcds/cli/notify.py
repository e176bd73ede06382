"""``rcds notify ...``: run a notification broker, announce a revision, watch announcements."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from rcds.errors import ConfigError

ENV_SERVERS = "RCDS_NOTIFY"
"""Comma-separated broker URLs that ``rcds repo`` commands announce new revisions to."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``notify`` and its subcommands."""
    notify = sub.add_parser("notify", help="revision notifications (stock CernVM-FS protocol)")
    cmds = notify.add_subparsers(dest="notify_command", metavar="ACTION", required=True)

    text = "run a notification broker (/notifications/subscribe and /notifications/publish)"
    p = cmds.add_parser("serve", help=text, description=text)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=int, default=4929, help="listen port (default 4929, as stock's gateway)")
    p.add_argument(
        "--allow-publish",
        action="append",
        metavar="CIDR",
        help="network allowed to publish (repeatable; default: loopback only)",
    )
    p.add_argument(
        "--write-timeout", type=float, default=30.0, help="seconds before a stuck subscriber is cut"
    )
    p.set_defaults(func=_serve)

    text = "announce the current revision of a repository to a broker (like cvmfs_swissknife notify -p)"
    p = cmds.add_parser("publish", help=text, description=text)
    p.add_argument("name", metavar="NAME", help="repository name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--root", type=Path, help="directory that holds the repository (default: ./NAME)")
    src.add_argument("--repo-url", help="take the manifest from http://host/cvmfs/NAME instead")
    p.add_argument("--server", required=True, action="append", help="broker base URL (repeatable)")
    p.set_defaults(func=_publish)

    text = "print the revisions a broker announces for a repository (hints, not verified)"
    p = cmds.add_parser("subscribe", help=text, description=text)
    p.add_argument("name", metavar="NAME", help="repository name")
    p.add_argument("--server", required=True, help="broker base URL")
    p.add_argument("--min-revision", type=int, default=0, help="only report revisions above this")
    p.add_argument("--continuous", action="store_true", help="keep going after the first report")
    p.set_defaults(func=_subscribe)


def servers_from(option: list[str] | None) -> list[str]:
    """Broker URLs from ``--notify`` options, else from ``$RCDS_NOTIFY``."""
    if option:
        return option
    return [s for s in os.environ.get(ENV_SERVERS, "").replace(" ", ",").split(",") if s]


def _serve(args: argparse.Namespace) -> int:
    from rcds.notify.broker import LOOPBACK, Broker
    from rcds.notify.server import serve_broker

    broker = Broker(allow_publish=args.allow_publish or LOOPBACK, write_timeout=args.write_timeout)

    def ready(url: str) -> None:
        print(f"rcds notify: broker at {url}/notifications/ (Ctrl-C stops)", flush=True)

    asyncio.run(serve_broker(broker, args.host, args.port, ready=ready))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from rcds.format.notification import Activity
    from rcds.net.notify_post import post_activity

    if args.repo_url:
        from rcds.repo.http_source import HttpSource

        manifest = HttpSource.for_url(args.repo_url.rstrip("/")).root_file(".cvmfspublished")
    else:
        from rcds.publish.layout import Layout
        from rcds.storage.local import LocalStore

        layout = Layout(args.root or Path(args.name), args.name)
        layout.load_settings()
        manifest = LocalStore(layout.public).get(".cvmfspublished")
    activity = Activity.of(manifest)
    if activity.repository != args.name:
        raise ConfigError(
            f"that manifest is of {activity.repository}, not {args.name}; check --root/--repo-url"
        )
    revision = activity.signed_manifest().manifest.revision
    for server in args.server:
        answer = post_activity(server, activity.to_json())
        n = answer.get("subscribers")
        print(
            f"announced {args.name} revision {revision} to {server}"
            + (f" ({n} subscribers)" if n is not None else "")
        )
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from rcds.net.notify_stream import Subscription

    seen = args.min_revision
    sub = Subscription(args.server, args.name)
    try:
        for activity in sub:
            m = activity.signed_manifest().manifest
            if m.revision <= seen:
                continue
            seen = m.revision
            print(
                f"{args.name} is now at revision {m.revision}, root catalog {m.root_catalog.hex}", flush=True
            )
            if not args.continuous:
                break
    finally:
        sub.close()
    return 0
