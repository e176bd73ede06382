"""The job commands: ``rcds publish`` (submit side) and ``rcds wait`` (worker side).

::

    rcds publish ./mycode --group dune --server https://rcds01.example.org,https://rcds02.example.org --wait
    rcds wait dune/<sha256> --timeout 600 --link "$_CONDOR_SCRATCH_DIR/code"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from rcds.cli.output import human_bytes, print_kv
from rcds.client.config.settings import DEFAULT_ETC
from rcds.errors import ConfigError
from rcds.jobs.credentials import Credentials
from rcds.jobs.pubapi_client import PubapiClient, RetryPolicy
from rcds.jobs.submit import publish_code
from rcds.jobs.wait import (
    DEFAULT_CVMFS_ROOT,
    DEFAULT_PREFIX,
    ClientAccess,
    PollPolicy,
    discover_repos,
    wait_for_code,
)

SERVERS_ENV = ("RCDS_SERVERS", "JOBSUB_DROPBOX_SERVER_LIST")


class ProgressBar:
    """A one-line progress display on a terminal (nothing at all elsewhere)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._last = 0.0
        self._phase = ""
        self._t0 = time.monotonic()

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        """Show ``done`` of ``total`` (None: unknown) for ``phase``; a new phase starts a new line."""
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self._phase:
            self.finish()
            self._phase, self._t0 = phase, now
        elif now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        rate = done / max(now - self._t0, 1e-3)
        if total:
            width = 30
            filled = int(width * done / total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}% "
            text = f"{bar}{human_bytes(done)} / {human_bytes(total)}"
        else:
            text = human_bytes(done)
        self.stream.write(f"\r{phase:>7} {text}  {human_bytes(rate)}/s\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        """End the current line."""
        if self.enabled and self._phase:
            self.stream.write("\n")
            self.stream.flush()
            self._phase = ""


def _auth_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("publishing servers and credentials")
    g.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL[,URL...]",
        help="pubapi servers in order of preference, repeatable (default $RCDS_SERVERS, "
        "else $JOBSUB_DROPBOX_SERVER_LIST); a bare host name means https://HOST/pubapi",
    )
    g.add_argument("--token", type=Path, metavar="FILE", help="bearer token file ($BEARER_TOKEN[_FILE])")
    g.add_argument("--cert", type=Path, metavar="FILE", help="client certificate or proxy ($X509_USER_PROXY)")
    g.add_argument("--cert-key", type=Path, metavar="FILE", help="key of --cert, if not in the same file")
    g.add_argument("--ca", type=Path, metavar="FILE", help="CA bundle to verify servers (default: system)")
    g.add_argument("--capath", type=Path, metavar="DIR", help="CA directory ($X509_CERT_DIR)")


def _client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading repositories with the client library")
    g.add_argument(
        "--repo-url",
        action="append",
        default=[],
        metavar="URL",
        help="http://HOST/cvmfs/REPO (or with @fqrn@ for every repository), repeatable",
    )
    g.add_argument(
        "--key",
        action="append",
        default=[],
        type=Path,
        metavar="PUB",
        help="master public key or key directory",
    )
    g.add_argument("--cache", type=Path, metavar="DIR", help="client cache directory")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``publish`` and ``wait``."""
    p = sub.add_parser(
        "publish",
        help="publish a code directory or tarball for jobs (prints its CID and path)",
        description="Pack DIR reproducibly (or take TARBALL as is), name it GROUP/<sha256>, and "
        "publish it unless a server has it already.",
    )
    p.add_argument("source", type=Path, metavar="DIR|TARBALL")
    p.add_argument("-G", "--group", default=os.environ.get("GROUP"), help="experiment / VO group ($GROUP)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out matches (dirs)")
    p.add_argument("--workdir", type=Path, metavar="DIR", help="where the temporary tarball goes")
    _auth_options(p)
    g = p.add_argument_group("retries and waiting")
    g.add_argument("--retries", type=int, default=3, metavar="N", help="extra rounds over the servers (3)")
    g.add_argument("--backoff", type=float, default=1.0, metavar="S", help="first pause between rounds (1 s)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S", help="time limit per call (300 s)")
    g.add_argument("--wait", action="store_true", help="return once a server reports the CID published")
    g.add_argument("--wait-client", action="store_true", help="also wait until the client library sees it")
    g.add_argument("--wait-timeout", type=float, default=600.0, metavar="S", help="waiting limit (600 s)")
    _client_options(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.set_defaults(func=_publish)

    w = sub.add_parser(
        "wait",
        help="on a worker node: wait until a CID is published, then link it (prints its path)",
        description="Look for <cvmfs-root>/<repo>/<prefix>/CID in every repository (mounted), or "
        "through the client library, until it appears or the timeout passes.",
    )
    w.add_argument("cid", metavar="CID")
    w.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds (600)")
    w.add_argument("--link", type=Path, metavar="DIR/NAME", help="symlink (or copy, without a mount) here")
    w.add_argument("--repos", action="append", default=[], metavar="A,B", help="repositories ($RCDS_REPOS)")
    w.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"directory of CIDs in a repository ({DEFAULT_PREFIX})"
    )
    w.add_argument("--cvmfs-root", type=Path, default=DEFAULT_CVMFS_ROOT, metavar="DIR", help="(/cvmfs)")
    w.add_argument(
        "--config-dir", type=Path, metavar="DIR", help=f"CernVM-FS client configuration ({DEFAULT_ETC})"
    )
    w.add_argument(
        "--poll-max", type=float, default=15.0, metavar="S", help="longest pause between looks (15)"
    )
    w.add_argument(
        "--notify",
        metavar="URL",
        help="notification broker: look again as soon as a new revision is announced "
        "(default: CVMFS_NOTIFICATION_SERVER of the client configuration)",
    )
    _auth_options(w)
    _client_options(w)
    w.add_argument("--json", action="store_true", help="print a JSON object")
    w.set_defaults(func=_wait)


def _servers(args: argparse.Namespace, required: bool) -> list[str]:
    servers: list[str] = list(args.server)
    for name in SERVERS_ENV:
        if servers:
            break
        if os.environ.get(name, "").strip():
            servers = [os.environ[name]]
    if required and not servers:
        raise ConfigError("no publishing server given; pass --server URL[,URL...] or set RCDS_SERVERS")
    return servers


def _credentials(args: argparse.Namespace) -> Credentials:
    return Credentials.discover(
        token_file=args.token,
        cert_file=args.cert,
        key_file=args.cert_key,
        ca_file=args.ca,
        ca_dir=args.capath,
    )


def _access(args: argparse.Namespace, config_dir: Path | None = None) -> ClientAccess | None:
    if not args.repo_url and config_dir is None:
        return None
    return ClientAccess(tuple(args.repo_url), tuple(args.key), config_dir, args.cache)


def _publish(args: argparse.Namespace) -> int:
    if not args.group:
        raise ConfigError("no group given; pass --group GROUP (the experiment or VO) or set $GROUP")
    if args.retries < 0:
        raise ConfigError("--retries must be 0 or more")
    access = _access(args)
    if args.wait_client and access is None:
        raise ConfigError("--wait-client needs --repo-url URL and --key PUB to read the repository")
    bar = ProgressBar(sys.stderr, sys.stderr.isatty() and not args.no_progress)
    try:
        out = publish_code(
            args.source,
            args.group,
            _servers(args, True),
            credentials=_credentials(args),
            retry=RetryPolicy(rounds=args.retries + 1, backoff=args.backoff, deadline=args.timeout),
            exclude=args.exclude,
            workdir=args.workdir,
            progress=bar,
            wait=args.wait or args.wait_client,
            wait_timeout=args.wait_timeout,
            client_check=access if args.wait_client else None,
        )
    finally:
        bar.finish()
    if args.json:
        print(json.dumps(out.as_json(), sort_keys=True))
        return 0
    print_kv(
        [
            ("cid", out.cid),
            ("path", out.path or f"(queued on {out.server}; not published yet)"),
            ("uploaded", f"yes, {human_bytes(out.size)}" if out.uploaded else "no (published already)"),
            ("server", out.server),
        ]
    )
    return 0


def _configured_broker(config_dir: Path | None) -> str | None:
    """``CVMFS_NOTIFICATION_SERVER`` of the client configuration, if there is one."""
    if config_dir is None:
        return None
    from rcds.client.config.settings import load_client_config
    from rcds.client.fetch.notifications import notification_server

    return notification_server(load_client_config(None, etc_dir=config_dir))


def _wait(args: argparse.Namespace) -> int:
    config_dir = args.config_dir
    if config_dir is None and not args.repo_url and DEFAULT_ETC.is_dir():
        config_dir = DEFAULT_ETC
    access = _access(args, config_dir)
    servers = _servers(args, False)

    def from_servers() -> list[str]:
        client = PubapiClient(servers, _credentials(args), RetryPolicy(rounds=2, deadline=60.0))
        try:
            return client.config()
        finally:
            client.close()

    repos = discover_repos(
        args.repos,
        server_repos=from_servers if servers else None,
        access=access,
        config_dir=config_dir or DEFAULT_ETC,
    )
    out = wait_for_code(
        args.cid,
        repos,
        timeout=args.timeout,
        link=args.link,
        cvmfs_root=args.cvmfs_root,
        prefix=args.prefix,
        access=access,
        poll=PollPolicy(start=min(1.0, args.poll_max), cap=args.poll_max),
        notify=args.notify or _configured_broker(config_dir),
    )
    if args.json:
        print(json.dumps(out.as_json(), sort_keys=True))
    elif out.found.via == "mount":
        print(out.found.path)
    else:
        print(out.linked or out.found.path)
    return 0
