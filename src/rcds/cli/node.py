"""Worker-node commands for pilots: ``rcds probe`` (what this node allows) and ``rcds exec``.

::

    rcds probe --repos sw.example.org --json
    rcds exec --repos sw.example.org -- ls /cvmfs/sw.example.org
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rcds.cli.output import print_kv
from rcds.client.config.names import check_fqrn
from rcds.client.config.settings import DEFAULT_ETC, load_client_config
from rcds.client.support import default_cache_dir
from rcds.errors import ConfigError

DEFAULT_ROOT = Path("/cvmfs")


def _repos(text: str | None, config_dir: Path) -> tuple[str, ...]:
    if text is None:  # the configured list, as the stock client's CVMFS_REPOSITORIES
        text = (load_client_config(None, etc_dir=config_dir).get("CVMFS_REPOSITORIES") or "").strip()
    return tuple(check_fqrn(name.strip()) for name in text.split(",") if name.strip())


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache)
    configured = (load_client_config(None, etc_dir=args.config_dir).get("RCDS_CACHE_DIR") or "").strip()
    return Path(configured) if configured else default_cache_dir()


def _access_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository access (passed on to rcds mount)")
    g.add_argument("--config-dir", type=Path, default=DEFAULT_ETC, metavar="DIR", help="client configuration")
    g.add_argument("--server", action="append", default=[], metavar="URL", help="server URL, repeatable")
    g.add_argument("--key", action="append", default=[], type=Path, metavar="FILE", help="master public key")
    g.add_argument("--proxy", metavar="PROXIES", help="proxies in CVMFS_HTTP_PROXY syntax")
    g.add_argument("--cache", type=Path, metavar="DIR", help="cache directory")


def _mount_options(args: argparse.Namespace) -> list[str]:
    out = ["--config-dir", str(args.config_dir.resolve())]
    for url in args.server:
        out += ["--server", url]
    for key in args.key:
        out += ["--key", str(key.resolve())]
    if args.proxy:
        out += ["--proxy", args.proxy]
    if args.cache:
        out += ["--cache", str(args.cache.resolve())]
    return out


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``probe`` and ``exec``."""
    p = sub.add_parser(
        "probe",
        help="what this node allows (namespaces, FUSE, /cvmfs, cache) and the mode rcds exec would use",
        description="Check what this node allows and which mode rcds exec would use; exit 0 if one works.",
    )
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where repositories appear (/cvmfs)")
    p.add_argument("--repos", metavar="A,B", help="repositories wanted (default: CVMFS_REPOSITORIES)")
    p.add_argument("--config-dir", type=Path, default=DEFAULT_ETC, metavar="DIR", help="client configuration")
    p.add_argument("--cache", type=Path, metavar="DIR", help="cache directory to check")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_probe)

    p = sub.add_parser(
        "exec",
        help="run a command with the repositories mounted at --root, unprivileged if need be",
        description=(
            "Run COMMAND with the repositories under --root (/cvmfs): mounted inside user, mount and PID "
            "namespaces when the node allows it, else through fusermount3; everything is torn down "
            "when COMMAND exits or rcds exec is killed. The command's exit code is passed on."
        ),
    )
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where repositories appear (/cvmfs)")
    p.add_argument("--repos", metavar="A,B", help="repositories that must be there before COMMAND starts")
    p.add_argument(
        "--mode",
        choices=("auto", "native", "root", "userns", "fusermount"),
        default="auto",
        help="how to mount (default: the best that rcds probe finds)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the mount (60)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not say which mode is used")
    _access_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    p.set_defaults(func=_exec)


def _probe(args: argparse.Namespace) -> int:
    from rcds.mount.probe import probe_node

    report = probe_node(args.root.absolute(), _repos(args.repos, args.config_dir), _cache_dir(args))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.mode else 1

    def fact(ok: bool, detail: str) -> str:
        return ("yes: " if ok else "no: ") + detail

    print_kv(
        [
            ("kernel", report.kernel),
            ("user", str(report.uid)),
            ("user namespaces", fact(*report.userns)),
            ("/dev/fuse", fact(*report.dev_fuse)),
            ("FUSE in user namespace", fact(*report.fuse_in_userns)),
            ("fusermount3", fact(*report.fusermount3)),
            ("root", fact(*report.root_state)),
            ("served", ", ".join(report.served) or "none"),
            ("missing", ", ".join(report.missing) or "none"),
            ("cache", fact(*report.cache_writable)),
            ("mode", f"{report.mode or 'none'} ({report.reason})"),
        ]
    )
    return 0 if report.mode else 1


def _exec(args: argparse.Namespace) -> int:
    from rcds.mount.execute import ExecRequest, run_exec
    from rcds.mount.probe import probe_node

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("rcds exec needs a command after '--', e.g. rcds exec -- ls /cvmfs")
    root = args.root.absolute()
    repos = _repos(args.repos, args.config_dir) if args.repos else ()
    report = probe_node(root, repos, _cache_dir(args))
    mode, reason = (report.mode, report.reason) if args.mode == "auto" else (args.mode, "chosen with --mode")
    if mode is None:
        raise ConfigError(f"rcds exec cannot mount here: {report.reason}")
    request = ExecRequest(
        command=command,
        root=root,
        repos=repos,
        mount_options=_mount_options(args),
        ready_timeout=args.timeout,
        quiet=args.quiet,
    )
    return run_exec(request, mode, reason, userns_ok=report.userns.ok)
