"""``rcds mount``: a repository (or a directory of them) as a read-only FUSE file system.

::

    rcds mount sw.example.org /cvmfs/sw.example.org        # one repository, in the background
    rcds mount --root /cvmfs --foreground                   # every configured one, on first lookup

Without ``--foreground`` the command starts the daemon, waits until the mount is there and
returns (exit 0), or returns the daemon's error. In the foreground it prints one line
``rcds: mounted ... at MOUNTPOINT`` on standard output once mounted (scripts wait for it) and
runs until SIGTERM/SIGINT or ``fusermount3 -u``, then unmounts.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rcds.cli.client import _common, overrides_of
from rcds.client.config.names import check_fqrn
from rcds.errors import ConfigError, InputError

if TYPE_CHECKING:
    from rcds.mount.repomount import RepoMount

READY = "rcds: mounted"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rcds mount``."""
    help_text = "mount a repository (or, with --root, every configured one) read-only with FUSE"
    p = sub.add_parser("mount", help=help_text, description=help_text, parents=[_common()])
    p.add_argument("repo", nargs="?", metavar="REPO", help="repository name (fqrn)")
    p.add_argument("mountpoint", nargs="?", type=Path, metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="serve every configured repository under DIR, each appearing on first lookup of its name",
    )
    p.add_argument("--repos", metavar="A,B", help="with --root: only these repositories")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--log-file", type=Path, metavar="FILE", help="append the log to FILE (default: stderr)")
    p.add_argument(
        "--ttl", type=float, metavar="SECONDS", help="check for new revisions this often (default: the TTL)"
    )
    p.add_argument("--threads", type=int, default=32, help="worker threads for downloads (default 32)")
    p.add_argument(
        "--passthrough",
        action="store_true",
        help="let the kernel read cached files itself (FUSE passthrough, root only): fewer daemon "
        "CPU per first read, but every open then reaches the daemon (see docs/mount.md)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (caches, failovers, revisions)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST", help="address for --metrics-port")
    p.add_argument(
        "--no-allow-other",
        action="store_true",
        help="only the mounting user may use the mount (default as root: every user)",
    )
    p.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_mount)


def _check(args: argparse.Namespace) -> Path:
    if args.root is not None:
        if args.repo is not None or args.mountpoint is not None:
            raise InputError("give either REPO MOUNTPOINT or --root DIR, not both")
        return Path(args.root)
    if args.repo is None or args.mountpoint is None:
        raise InputError(
            "give REPO MOUNTPOINT (e.g. rcds mount sw.example.org /cvmfs/sw.example.org) or --root DIR"
        )
    if args.repos:
        raise InputError("--repos goes with --root")
    check_fqrn(args.repo)
    return Path(args.mountpoint)


def _mount(args: argparse.Namespace) -> int:
    mountpoint = _check(args)
    if args.threads < 1:
        raise InputError("--threads must be at least 1")
    if not args.foreground:
        return _background(args)
    return _foreground(args, mountpoint)


def _log_to(path: Path | None) -> None:
    if path is None:
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s rcds[%(process)d] %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def _foreground(args: argparse.Namespace, mountpoint: Path) -> int:
    from rcds.mount.daemon import prepare_mountpoint, serve
    from rcds.mount.operations import RcdsOperations
    from rcds.mount.options import MountOptions

    _log_to(args.log_file)
    prepare_mountpoint(mountpoint)  # before any download: a bad mount point fails at once
    options = MountOptions(
        config_dir=args.config_dir,
        overrides=overrides_of(args),
        cache_dir=args.cache,
        ttl=args.ttl,
        shared=args.root is not None,
    )
    owner = options.owner()
    shown_owner = owner if owner is not None else (os.getuid(), os.getgid())
    if args.root is None:
        mounts = [options.open(args.repo)]
        ops = RcdsOperations(
            mounts,
            kcache=options.kcache(),
            threads=args.threads,
            owner=shown_owner,
            passthrough=args.passthrough,
        )
        what = f"{args.repo} (revision {mounts[0].repo.revision})"
        fsname = args.repo
    else:
        allowed = {check_fqrn(r.strip()) for r in args.repos.split(",") if r.strip()} if args.repos else None

        def opener(name: str) -> RepoMount:
            if allowed is not None and name not in allowed:
                raise ConfigError(f"{name} is not among --repos")
            check_fqrn(name)
            return options.open(name)

        ops = RcdsOperations(
            [],
            opener=opener,
            kcache=options.kcache(),
            threads=args.threads,
            owner=shown_owner,
            passthrough=args.passthrough,
        )
        what = "repositories"
        fsname = "rcds"

    metrics = None

    def ready() -> None:
        nonlocal metrics
        if args.metrics_port is not None:
            from rcds.metrics.exposition import start_server
            from rcds.mount.metrics import mount_registry

            metrics = start_server(
                mount_registry(lambda: ops.mounts, ops.request_counts), args.metrics_host, args.metrics_port
            )
            logging.getLogger("rcds.mount").info(
                "metrics at http://%s:%d/metrics", args.metrics_host, metrics.port
            )
        print(f"{READY} {what} at {mountpoint}", flush=True)
        if args.detached:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1) if args.log_file is None else (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)

    try:
        serve(ops, mountpoint, fsname, ready, allow_other=False if args.no_allow_other else None)
    finally:
        if metrics is not None:
            metrics.stop()
    return 0


def _background(args: argparse.Namespace) -> int:
    """Start ``rcds mount ... --foreground --detached`` in a new session and wait for its ready line."""
    argv = [a for a in sys.argv[1:] if a not in ("-f", "--foreground")]
    cmd = [sys.executable, "-m", "rcds.cli.main", *argv, "--foreground", "--detached"]
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.startswith(READY):
        print(line.rstrip("\n") + f" (daemon pid {child.pid})")
        child.stdout.close()
        return 0
    return child.wait() or 1
