"""The client commands: ``rcds ls``, ``cat``, ``stat``, ``get``, ``info`` and ``config show``.

A repository path is written ``REPO:/path`` where ``REPO`` is a repository name (fqrn) looked
up in the CernVM-FS style client configuration (``--config-dir``, default ``/etc/cvmfs``).
``--server``, ``--key``, ``--proxy`` and ``--cache`` override it, so the commands also work
without any configuration file::

    rcds ls --server http://s1.example.org/cvmfs/sw.example.org --key sw.example.org.pub sw.example.org:/
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat as stat_mod
import sys
import time
from pathlib import Path

from rcds.cli.output import human_bytes, print_kv
from rcds.client.config.names import check_fqrn
from rcds.client.config.settings import DEFAULT_ETC, ClientConfig, load_client_config
from rcds.client.get.materialize import Progress, materialize
from rcds.client.repository import Repository, default_cache_dir
from rcds.errors import ConfigError, InputError
from rcds.repo.whitelist_age import WhitelistAge

COPY_BLOCK = 1 << 20


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("repository access (override the configuration)")
    g.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_ETC,
        metavar="DIR",
        help="client configuration (/etc/cvmfs)",
    )
    g.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="server URL, repeatable (CVMFS_SERVER_URL)",
    )
    g.add_argument(
        "--key", action="append", default=[], type=Path, metavar="FILE", help="master public key, repeatable"
    )
    g.add_argument("--proxy", metavar="PROXIES", help="proxies in CVMFS_HTTP_PROXY syntax, e.g. DIRECT")
    g.add_argument(
        "--cache", type=Path, metavar="DIR", help=f"cache directory (default {default_cache_dir()})"
    )
    return p


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands."""
    common = _common()

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    p = cmd("ls", "list a directory of a repository")
    p.add_argument("target", metavar="REPO[:/path]")
    p.add_argument("-l", "--long", action="store_true", help="mode, links, size, time and link targets")
    p.set_defaults(func=_ls)

    p = cmd("cat", "write files of a repository to standard output")
    p.add_argument("targets", nargs="+", metavar="REPO:/path")
    p.set_defaults(func=_cat)

    p = cmd("stat", "show the attributes of a path in a repository")
    p.add_argument("target", metavar="REPO:/path")
    p.add_argument("-L", "--dereference", action="store_true", help="follow a final symbolic link")
    p.set_defaults(func=_stat)

    p = cmd("get", "copy a subtree of a repository to a local directory (parallel, resumable)")
    p.add_argument("target", metavar="REPO:/path")
    p.add_argument("dest", type=Path, metavar="DEST")
    p.add_argument("-j", "--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")
    fill = p.add_mutually_exclusive_group()
    fill.add_argument(
        "--fill-cache",
        action="store_true",
        help="also add the downloaded objects to the local cache (for later jobs on this node)",
    )
    fill.add_argument("--no-cache", action="store_true", help="do not add them (the default)")
    p.set_defaults(func=_get, exit_at_once=True)  # nothing left to clean up: see exit_at_once

    p = cmd("info", "show the revision, its age, and the state of servers, proxies and cache")
    p.add_argument("target", metavar="REPO")
    p.set_defaults(func=_info)

    config = sub.add_parser("config", help="client configuration")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "show",
        parents=[common],
        help="show each effective parameter with the file that set it",
        description="show each effective parameter with the file (and line) that set it",
    )
    p.add_argument("target", nargs="?", metavar="REPO", help="include the repository's domain and own files")
    p.set_defaults(func=_config_show)


# -- helpers ----------------------------------------------------------------------------------------


def split_target(text: str) -> tuple[str, str]:
    """``REPO:/path`` -> (fqrn, path); ``REPO`` alone means its root."""
    name, sep, path = text.partition(":")
    if not name:
        raise InputError(f"{text!r}: write the repository path as REPO:/path, e.g. sw.example.org:/bin")
    check_fqrn(name)
    return name, ("/" + path.lstrip("/")) if sep else "/"


def overrides_of(args: argparse.Namespace) -> dict[str, str]:
    """The configuration keys set by the common options (``--server``, ``--key``, ``--proxy``)."""
    overrides: dict[str, str] = {}
    if args.server:
        overrides["CVMFS_SERVER_URL"] = ";".join(args.server)
    if args.key:
        overrides["CVMFS_PUBLIC_KEY"] = ":".join(str(k.resolve()) for k in args.key)
    if args.proxy:
        overrides["CVMFS_HTTP_PROXY"] = args.proxy
    return overrides


def _config(args: argparse.Namespace, fqrn: str | None) -> ClientConfig:
    overrides = overrides_of(args)
    if args.cache:
        overrides["RCDS_CACHE_DIR"] = str(args.cache)
    config = load_client_config(fqrn, etc_dir=args.config_dir, overrides=overrides)
    if not (config.get("CVMFS_HTTP_PROXY") or "").strip():
        # Stock refuses to mount without a proxy setting; a command line tool connects directly.
        config = load_client_config(
            fqrn, etc_dir=args.config_dir, overrides={**overrides, "CVMFS_HTTP_PROXY": "DIRECT"}
        )
    return config


def _open(args: argparse.Namespace, fqrn: str) -> Repository:
    config = _config(args, fqrn)
    if not (config.get("CVMFS_SERVER_URL") or "").strip():
        raise ConfigError(
            f"no server known for {fqrn}: pass --server http://HOST/cvmfs/{fqrn} or set CVMFS_SERVER_URL "
            f"in {args.config_dir}/config.d/{fqrn}.conf"
        )
    return Repository.open_name(fqrn, config, cache_dir=args.cache)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


# -- commands ---------------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    fqrn, path = split_target(args.target)
    with _open(args, fqrn) as repo:
        st = repo.stat(path)
        if stat_mod.S_ISDIR(st.st_mode):
            entries = [(e.name, e.stat, e.symlink) for e in repo.scandir(path)]
        else:
            lst = repo.lstat(path)
            link = repo.readlink(path) if stat_mod.S_ISLNK(lst.st_mode) else ""
            entries = [(path.rstrip("/").rsplit("/", 1)[-1], lst, link)]
        if not args.long:
            for name, _, _ in entries:
                print(name)
            return 0
        width = max((len(str(s.st_size)) for _, s, _ in entries), default=1)
        for name, s, link in entries:
            shown = f"{name} -> {link}" if stat_mod.S_ISLNK(s.st_mode) else name
            mode = stat_mod.filemode(s.st_mode)
            print(f"{mode} {s.st_nlink:>3} {s.st_size:>{width}} {_when(s.st_mtime)} {shown}")
    return 0


def _cat(args: argparse.Namespace) -> int:
    targets = [split_target(t) for t in args.targets]
    out = sys.stdout.buffer
    repos: dict[str, Repository] = {}
    try:
        for fqrn, path in targets:
            if fqrn not in repos:
                repos[fqrn] = _open(args, fqrn)
            with repos[fqrn].open(path) as f:
                shutil.copyfileobj(f, out, COPY_BLOCK)
        out.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for repo in repos.values():
            repo.close()
    return 0


def _kind(mode: int) -> str:
    for test, name in (
        (stat_mod.S_ISDIR, "directory"),
        (stat_mod.S_ISREG, "regular file"),
        (stat_mod.S_ISLNK, "symbolic link"),
        (stat_mod.S_ISCHR, "character device"),
        (stat_mod.S_ISBLK, "block device"),
        (stat_mod.S_ISFIFO, "fifo"),
        (stat_mod.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown"


def _stat(args: argparse.Namespace) -> int:
    fqrn, path = split_target(args.target)
    with _open(args, fqrn) as repo:
        s = repo.stat(path) if args.dereference else repo.lstat(path)
        e = repo.entry(path, follow=args.dereference)
        rows = [
            ("path", f"{fqrn}:{e.path or '/'}"),
            ("type", _kind(s.st_mode)),
            ("size", f"{s.st_size} ({human_bytes(s.st_size)})"),
            ("mode", f"{stat_mod.S_IMODE(s.st_mode):04o} ({stat_mod.filemode(s.st_mode)})"),
            ("links", str(s.st_nlink)),
            ("uid/gid", f"{s.st_uid}/{s.st_gid}"),
            ("inode", str(s.st_ino)),
            ("modified", time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(s.st_mtime))),
        ]
        if e.is_symlink:
            rows.append(("target", e.symlink))
        if e.is_regular:
            pieces = repo.pieces(path)
            if e.is_chunked:
                rows.append(("chunks", f"{len(pieces)}"))
            elif pieces:
                rows.append(("content", pieces[0].hash.hex))
            rows.append(("compressed", "yes" if e.compressed else "no"))
        if e.is_nested_root or e.is_nested_mountpoint:
            rows.append(("catalog", "nested catalog mount point"))
        rows.append(("revision", str(repo.revision)))
        print_kv(rows)
    return 0


class _Bar:
    """A one-line progress display on a terminal (stderr), updated at most 5 times a second."""

    def __init__(self) -> None:
        self.last = 0.0
        self.shown = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        done = p.files_done >= p.files_total
        if now - self.last < 0.2 and not done:
            return
        self.last = now
        elapsed = max(1e-6, now - p.started)
        pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
        rate = human_bytes((p.bytes_done) / elapsed)
        line = (
            f"\r{pct:5.1f}%  {p.files_done}/{p.files_total} files  "
            f"{human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}  {rate}/s"
        )
        if p.skipped:
            line += f"  ({p.skipped} already there)"
        sys.stderr.write(line + "\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _get(args: argparse.Namespace) -> int:
    fqrn, path = split_target(args.target)
    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    bar = _Bar() if sys.stderr.isatty() and not args.no_progress else None
    with _open(args, fqrn) as repo:
        try:
            report = materialize(
                repo, path, args.dest, workers=args.jobs, progress=bar, keep_in_cache=args.fill_cache
            )
        finally:
            if bar is not None:
                bar.end()
    extra = f", {report.skipped} already up to date" if report.skipped else ""
    if report.special_skipped:
        extra += f", {report.special_skipped} special files skipped"
    print(
        f"copied {fqrn}:{path} (revision {report.revision}) to {report.target}: {report.files} files "
        f"({human_bytes(report.bytes)}), {report.directories} directories, {report.symlinks} symlinks, "
        f"{report.hardlinks} hard links{extra} in {report.seconds:.1f} s"
    )
    return 0


def _whitelist_text(age: WhitelistAge | None) -> str:
    if age is None or age.expires is None:
        return "unknown"
    return f"expires {age.expires:%Y-%m-%d %H:%M} UTC (whitelist expires in {age.days_left} days)"


def _info(args: argparse.Namespace) -> int:
    fqrn, _ = split_target(args.target)
    with _open(args, fqrn) as repo:
        i = repo.info()
        quota = human_bytes(i.cache_quota) if i.cache_quota is not None else "unlimited"
        state = "online" if not i.offline else f"offline ({i.last_error})"
        print_kv(
            [
                ("name", i.fqrn),
                ("revision", str(i.revision)),
                ("root catalog", i.root_hash),
                ("published", f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(i.published))}"),
                ("age", _age(i.age)),
                ("ttl", f"{i.ttl:g} s"),
                ("state", state),
                ("cache", f"{i.cache_dir} ({human_bytes(i.cache_bytes)} of {quota})"),
                ("alien cache", str(i.alien_cache) if i.alien_cache else "none"),
                ("whitelist", _whitelist_text(i.whitelist)),
            ]
        )
        if i.whitelist is not None and i.whitelist.needs_resign:
            print(f"rcds: warning: {i.whitelist.message()}; tell the repository owner", file=sys.stderr)
        print()
        rows = []
        for ep in i.endpoints:
            latency = f"{ep.latency * 1000:.1f} ms" if ep.latency is not None else "-"
            state = ep.state + (f" (retry in {ep.retry_in:.0f} s)" if ep.retry_in else "")
            role = (
                ep.role if ep.group is None else f"{ep.role} g{ep.group}{' fallback' if ep.fallback else ''}"
            )
            rows.append(
                (("*" if ep.current else " ") + " " + role, ep.url, state, latency, ep.last_error or "")
            )
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        for r in rows:
            print(
                "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True))
                + ("  " + r[4] if r[4] else "")
            )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    fqrn = split_target(args.target)[0] if args.target else None
    config = _config(args, fqrn)
    for warning in config.warnings:
        print(f"rcds: warning: {warning}", file=sys.stderr)
    rows = config.explain()
    width = max((len(k) + len(v) + 1 for k, v, _ in rows), default=0)
    for key, value, source in rows:
        print(f"{key}={value}".ljust(width) + f"  # {source}")
    cache = args.cache or (config.get("RCDS_CACHE_DIR") or "").strip() or default_cache_dir()
    print(f"# rcds cache directory: {cache}")
    read = ", ".join(str(p) for p in config.files_read) or "none"
    print(f"# files read: {read}")
    return 0
