"""``rcds server ...``: create the service's repositories and run the publishing service."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rcds.service.config import ServiceConfig, example_toml


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``server`` and its subcommands."""
    server = sub.add_parser("server", help="the publishing service (pubapi)")
    cmds = server.add_subparsers(dest="server_command", metavar="ACTION", required=True)
    for name, text, func in (
        ("init", "create the configured repositories (with keys) that do not exist yet", _init),
        ("run", "run the web API, publish workers, stamps, cleanup and partner replicas", _run),
        (
            "check",
            "validate the configuration (files, keys, ports, CAs, repositories); exit 1 if wrong",
            _check,
        ),
    ):
        p = cmds.add_parser(name, help=text, description=text)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", type=Path, help="the service's TOML configuration")
        src.add_argument(
            "--base", type=Path, help="use the embedded defaults with everything under this directory"
        )
        p.set_defaults(func=func)
    p = cmds.add_parser("example-config", help="print a commented example configuration")
    p.set_defaults(func=lambda _a: print(example_toml(), end="") or 0)


def load(args: argparse.Namespace) -> ServiceConfig:
    """The configuration named on the command line."""
    if args.config is not None:
        cfg = ServiceConfig.load(args.config)
        cfg.check_paths()
        return cfg
    return ServiceConfig.default(args.base)


def _init(args: argparse.Namespace) -> int:
    from rcds.service.core import init_repositories

    cfg = load(args)
    created = init_repositories(cfg)
    for name in cfg.repositories:
        state = "created" if name in created else "exists"
        print(f"{name}: {state}; master public key {cfg.state_dir / name / 'keys' / (name + '.pub')}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from rcds.errors import ConfigError
    from rcds.service.check import check

    try:
        cfg = ServiceConfig.load(args.config) if args.config is not None else ServiceConfig.default(args.base)
    except ConfigError as exc:
        print(f"ERROR configuration: {exc}")
        print("rcds server check: the configuration does not load; nothing else was checked")
        return 1
    findings = check(cfg)
    for f in findings:
        print(f)
    bad = [f for f in findings if not f.ok]
    if bad:
        print(f"rcds server check: {len(bad)} problem{'s' if len(bad) > 1 else ''} found")
        return 1
    print("rcds server check: the configuration is usable")
    return 0


def _run(args: argparse.Namespace) -> int:
    from rcds.service.app import serve
    from rcds.service.core import Service

    cfg = load(args)
    service = Service(cfg)
    service.start()
    assert service.repo_server is not None
    repos_url = f"http://{cfg.serve.host}:{service.repo_server.port}/cvmfs/"

    def ready(url: str) -> None:
        notify = f", notifications at {url}/notifications/" if service.broker is not None else ""
        print(
            f"rcds server: pubapi at {url}/pubapi/, repositories at {repos_url}{notify}, "
            f"status page at {url}/status, metrics at {url}/metrics",
            flush=True,
        )

    try:
        asyncio.run(serve(service, ready=ready))
    finally:
        service.stop()
    return 0
