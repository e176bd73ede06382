"""``rcds replica ...``: a stand-alone stratum 1 (add, snapshot, run, serve, gc, list)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from rcds.cli.output import human_bytes
from rcds.errors import ConfigError, RcdsError
from rcds.replica.registry import ReplicaEntry, add_replica, list_replicas, load_replica
from rcds.replica.snapshot import SnapshotResult

ROOT_ENV = "RCDS_REPLICA_ROOT"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replica`` and its subcommands."""
    rep = sub.add_parser("replica", help="a stratum 1: replicate repositories and serve them")
    cmds = rep.add_subparsers(dest="replica_command", metavar="ACTION", required=True)

    def cmd(name: str, text: str, *, fqrn: bool = True) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=text, description=text)
        if fqrn:
            p.add_argument("fqrn", metavar="FQRN", help="repository name, e.g. sw.example.org")
        p.add_argument(
            "--root",
            type=Path,
            help=f"directory holding the replicas, one per repository (default: ${ROOT_ENV} or .)",
        )
        return p

    p = cmd("add", "register a replica: its upstream (stratum 0 or 1) and master public key")
    p.add_argument("--upstream", required=True, help="upstream base URL, http://host/cvmfs/FQRN")
    p.add_argument("--key", required=True, type=Path, help="the repository's master public key (PEM)")
    p.add_argument(
        "--no-master-replica",
        action="store_true",
        help="do not write .cvmfs_master_replica (other stratum 1s may then not replicate from here)",
    )
    p.set_defaults(func=_add)

    p = cmd("snapshot", "pull the upstream's current revision once (only what is new)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    p.set_defaults(func=_snapshot)

    p = cmds.add_parser(
        "run",
        help="keep replicas fresh (pull on a trigger, interval as fallback) and serve them",
        description="keep replicas fresh (pull on a trigger, interval as fallback) and serve them; "
        "SIGHUP pulls every repository at once, SIGTERM stops",
    )
    p.add_argument("--config", type=Path, required=True, help="TOML file (see docs/replica.md)")
    p.set_defaults(func=_run)

    p = cmd("serve", "serve every replica under the root at http://HOST:PORT/cvmfs/FQRN/", fqrn=False)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--max-age", type=int, default=61, help="Cache-Control max-age of .cvmfs* files")
    p.set_defaults(func=_serve)

    p = cmd("gc", "delete objects that neither the current nor the kept previous revisions need")
    p.add_argument(
        "--keep-revisions",
        type=int,
        default=3,
        help="revisions kept readable: the current one and the newest earlier ones served (default 3)",
    )
    p.set_defaults(func=_gc)

    p = cmd("list", "show the replicas under the root and their revisions", fqrn=False)
    p.set_defaults(func=_list)


def _root(args: argparse.Namespace) -> Path:
    if args.root is not None:
        return Path(args.root)
    return Path(os.environ.get(ROOT_ENV) or ".")


def describe(fqrn: str, result: SnapshotResult | RcdsError) -> str:
    """One line about a pull's outcome."""
    if isinstance(result, RcdsError):
        return f"{fqrn}: pull failed: {result}"
    return (
        f"{fqrn}: revision {result.revision}: {result.catalogs_fetched} catalogs and "
        f"{result.objects_fetched} objects fetched ({human_bytes(result.bytes_fetched)}), "
        f"{result.catalogs_skipped} catalogs already held, {result.seconds:.2f} s"
    )


def _add(args: argparse.Namespace) -> int:
    entry = add_replica(
        _root(args), args.fqrn, args.upstream, args.key, master_replica=not args.no_master_replica
    )
    print(f"{entry.fqrn}: replica in {entry.dir}, upstream {entry.upstream}")
    print(f"next: rcds replica snapshot {entry.fqrn} --root {_root(args)}")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from rcds.replica.replicator import Replicator

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    entry = load_replica(_root(args), args.fqrn)
    result = Replicator(workers=args.workers).pull(entry.spec())
    print(describe(entry.fqrn, result), flush=True)
    return 0


def _wait_for_signal(on_hup: Callable[[], None]) -> None:
    """Block until SIGTERM or SIGINT; call ``on_hup`` for every SIGHUP meanwhile."""
    stop = threading.Event()
    hup = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        (hup if signum == signal.SIGHUP else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    while not stop.is_set():
        if hup.wait(0.2):
            hup.clear()
            on_hup()


def _run(args: argparse.Namespace) -> int:
    from rcds.replica.metrics import ReplicaMetrics
    from rcds.replica.notifications import ReplicaNotifications
    from rcds.replica.replicator import Replicator
    from rcds.replica.runconfig import load_run_config
    from rcds.replica.runner import ReplicaRunner
    from rcds.repo.whitelist_age import assess_tree
    from rcds.serve.http import make_server

    cfg = load_run_config(args.config)
    for r in cfg.repositories:
        add_replica(cfg.root, r.name, r.upstream, r.key)
    entries = list_replicas(cfg.root)
    if not entries:
        raise ConfigError(
            f"no replicas under {cfg.root}: add [[repository]] tables to {args.config} "
            "or use rcds replica add"
        )
    stats = (
        ReplicaMetrics({e.fqrn for e in entries}, replicas={e.fqrn: e.dir for e in entries})
        if cfg.metrics is not None
        else None
    )
    server = None
    if cfg.serve is not None:
        s = cfg.serve
        server = make_server(
            {e.fqrn: e.dir for e in entries},
            s.host,
            s.port,
            root_max_age=s.root_max_age,
            object_max_age=s.object_max_age,
            access_log=(lambda r: stats.served(r.target, r.method, r.status, r.sent)) if stats else None,
        )
        server.start_background()
    dirs = {e.fqrn: e.dir for e in entries}
    warned: dict[str, float] = {}

    def warn_whitelist(fqrn: str, where: Path | None) -> None:
        """Say loudly (at most hourly) when a served whitelist is near expiry (the upstream must fix it)."""
        if where is None:
            return
        age = assess_tree(fqrn, where, dt.datetime.now(dt.UTC))
        if age.needs_resign and time.monotonic() - warned.get(fqrn, -3600.0) >= 3600.0:
            warned[fqrn] = time.monotonic()
            print(f"rcds replica run: WARNING: {age.message()}; the upstream must re-sign it", flush=True)

    broker = None
    if cfg.notify.broker_port is not None:
        from rcds.notify.server import BrokerThread

        broker = BrokerThread(host=cfg.serve.host if cfg.serve else "127.0.0.1", port=cfg.notify.broker_port)
    notes: ReplicaNotifications | None = None

    def on_result(fqrn: str, res: SnapshotResult | RcdsError) -> None:
        print(describe(fqrn, res), flush=True)
        warn_whitelist(fqrn, dirs.get(fqrn))
        if stats is not None:
            stats.pulled(fqrn, res)
        if notes is not None:
            notes.pulled(fqrn, res)

    runner = ReplicaRunner(
        [e.spec() for e in entries],
        interval=cfg.interval,
        retry=cfg.retry,
        parallel=cfg.parallel,
        replicator=Replicator(workers=cfg.workers),
        on_result=on_result,
    )
    notes = ReplicaNotifications(
        runner,
        {e.fqrn: e.dir for e in entries},
        subscribe=cfg.notify.subscribe,
        announce=cfg.notify.announce,
        local=[broker.broker.publish_threadsafe] if broker is not None else [],
    )
    names = ", ".join(e.fqrn for e in entries)
    where = f"; serving at http://{cfg.serve.host}:{server.port}/cvmfs/" if server and cfg.serve else ""
    if broker is not None:
        where += f"; notifications at {broker.url}/notifications/"
    exporter = None
    if stats is not None and cfg.metrics is not None:
        from rcds.metrics.exposition import start_server

        exporter = start_server(stats.registry, *cfg.metrics)
        where += f"; metrics at http://{cfg.metrics[0]}:{exporter.port}/metrics"
    print(f"rcds replica run: {names} every {cfg.interval:g} s{where}", flush=True)
    notes.start()
    runner.start()
    try:

        def pull_all_now() -> None:
            for e in entries:
                runner.notify(e.fqrn)

        _wait_for_signal(pull_all_now)
    finally:
        runner.stop()
        notes.close()
        if exporter is not None:
            exporter.stop()
        if broker is not None:
            broker.stop()
        if server is not None:
            server.stop()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from rcds.serve.http import make_server

    entries = list_replicas(_root(args))
    if not entries:
        raise ConfigError(f"no replicas under {_root(args)}; add one with rcds replica add")
    server = make_server({e.fqrn: e.dir for e in entries}, args.host, args.port, root_max_age=args.max_age)
    print(
        f"serving {len(entries)} replicas at http://{args.host}:{server.port}/cvmfs/ (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0


def _gc(args: argparse.Namespace) -> int:
    from rcds.replica.gc import collect_replica

    entry: ReplicaEntry = load_replica(_root(args), args.fqrn)
    r = collect_replica(entry.dir, args.keep_revisions)
    print(
        f"{entry.fqrn}: kept {r.revisions_kept} revisions ({r.reachable} objects); deleted "
        f"{r.catalogs_deleted} catalogs and {r.objects_deleted} objects, freed {human_bytes(r.bytes_freed)} "
        f"in {r.seconds:.2f} s"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from rcds.format import manifest as manifest_fmt

    for e in list_replicas(_root(args)):
        try:
            m = manifest_fmt.parse((e.dir / ".cvmfspublished").read_bytes()).manifest
            state = f"revision {m.revision}"
        except (OSError, RcdsError):
            state = "no revision yet"
        print(f"{e.fqrn}\t{state}\t{e.upstream}")
    return 0
