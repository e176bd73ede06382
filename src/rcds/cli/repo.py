"""``rcds repo ...``: the stratum 0 engine's commands."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from rcds.cli.notify import servers_from
from rcds.cli.output import human_bytes, print_kv
from rcds.errors import ConfigError, StorageError
from rcds.format.deflaters import DEFAULT, LIBRARIES, Compression
from rcds.format.hashes import Algorithm
from rcds.format.keys import load_certificate, load_public_key_file
from rcds.net.notify_post import NotifySender
from rcds.publish.create import create_repository
from rcds.publish.layout import Layout, Settings
from rcds.publish.policy import Limits
from rcds.publish.stratum0 import Stratum0
from rcds.publish.whitelist_sign import load_master_key, sign_offline
from rcds.repo.http_source import HttpSource
from rcds.repo.source import Source, StoreSource
from rcds.repo.verify import verify_repository
from rcds.repo.whitelist_age import WhitelistAge, WhitelistState, assess_tree
from rcds.serve.http import make_server
from rcds.storage.local import LocalStore

NOTIFY_WAIT = 5.0
"""Seconds a command waits at most for its notifications to be delivered (failures are only logged)."""

_COMPRESSION_CHOICES = ", ".join(f"{n}:{lib.levels[0]}-{lib.levels[-1]}" for n, lib in LIBRARIES.items())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``repo`` and its subcommands."""
    repo = sub.add_parser("repo", help="create, change, verify, collect and serve a repository (stratum 0)")
    cmds = repo.add_subparsers(dest="repo_command", metavar="ACTION", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", metavar="NAME", help="repository name, e.g. user1.example.org")
        p.add_argument("--root", type=Path, help="directory that holds the repository (default: ./NAME)")
        return p

    p = cmd("create", "create a new repository with fresh keys (revision 0)")
    p.add_argument("--hash", default="sha1", choices=["sha1", "rmd160", "shake128"], help="content hash")
    p.add_argument("--ttl", type=int, default=240, help="seconds clients cache the revision (catalog TTL)")
    p.add_argument("--whitelist-days", type=int, default=30, help="whitelist validity in days")
    p.add_argument(
        "--compression",
        metavar="LIB:LEVEL",
        help=f"deflate library and level of new objects: {_COMPRESSION_CHOICES} (default {DEFAULT};"
        " any choice writes ordinary zlib objects; see docs/cli.md)",
    )
    p.add_argument("--level", type=int, help="same as --compression zlib:LEVEL (older option)")
    p.add_argument(
        "--chunk-sizes", default="4M,8M,16M", help="min,avg,max chunk sizes (K/M suffixes), or 'off'"
    )
    p.add_argument(
        "--storage",
        metavar="s3://BUCKET/PREFIX",
        default="",
        help="keep the served tree in an S3 bucket instead of ROOT/public (credentials: AWS_* settings)",
    )
    p.add_argument("--s3-endpoint", default="", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--s3-region", default="", help="S3 region (default: AWS_DEFAULT_REGION or us-east-1)")
    p.add_argument("--s3-profile", default="", help="AWS profile holding the credentials")
    p.add_argument("--s3-acl", default="", help="canned ACL of every upload, e.g. public-read")
    p.add_argument(
        "--s3-public-url", default="", metavar="URL", help="where readers fetch the tree over HTTP"
    )
    p.set_defaults(func=_create)

    p = cmd("ingest", "publish a tarball or a directory under a path, as one new revision")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tar", metavar="FILE", help="tarball (plain, gzip, bzip2, xz, zstd); '-' reads stdin")
    src.add_argument("--dir", type=Path, metavar="SRC", help="directory to publish")
    p.add_argument("--path", required=True, help="where in the repository, e.g. /sw/group/cid")
    p.add_argument("--replace", action="store_true", help="swap an existing path")
    p.add_argument(
        "--max-bytes", type=_size, default=Limits().max_bytes, help="refuse inputs larger than this"
    )
    _notify_option(p)
    p.set_defaults(func=_ingest)

    p = cmd("rm", "remove a subtree as a new revision")
    p.add_argument("--path", required=True, help="the subtree to remove")
    _notify_option(p)
    p.set_defaults(func=_rm)

    p = cmds.add_parser("verify", help="verify signatures, every catalog and every object")
    p.add_argument(
        "name", metavar="NAME|URL", help="repository name (with --root) or http(s)://host/cvmfs/NAME"
    )
    p.add_argument("--root", type=Path, help="directory that holds the repository (for a NAME)")
    p.add_argument(
        "--key", type=Path, help="master public key (default for a local repository: its own .pub)"
    )
    p.set_defaults(func=_verify)

    p = cmd("config", "show the repository's settings, or change its compression")
    p.add_argument(
        "--compression",
        metavar="LIB:LEVEL",
        help="write new objects with this library and level from now on (existing objects stay valid)",
    )
    p.set_defaults(func=_config)

    p = cmd("gc", "delete objects unreachable from the newest revisions")
    p.add_argument("--keep-revisions", type=int, default=2, help="how many newest revisions stay readable")
    p.set_defaults(func=_gc)

    p = cmd(
        "resign", "re-sign the whitelist with the master key (run it from cron, or let the service do it)"
    )
    p.add_argument(
        "--whitelist-only",
        action="store_true",
        help="only write the signed whitelist to --out (on a machine holding the master key, not the "
        "repository); install it on the server with 'rcds repo install-whitelist'",
    )
    p.add_argument("--master-key", type=Path, help="master private key (default: the repository's own)")
    p.add_argument(
        "--certificate", type=Path, help="the repository certificate NAME.crt (with --whitelist-only)"
    )
    p.add_argument("--days", type=int, help="validity in days (default: the repository's, else 30)")
    p.add_argument("--hash", choices=["sha1", "rmd160", "shake128"], help="hash algorithm (default: sha1)")
    p.add_argument("--out", type=Path, help="where --whitelist-only writes the signed whitelist")
    p.set_defaults(func=_resign)

    p = cmd("install-whitelist", "install a whitelist signed elsewhere (checked as clients check it)")
    p.add_argument(
        "file", type=Path, metavar="FILE", help="the signed whitelist from 'resign --whitelist-only'"
    )
    p.set_defaults(func=_install_whitelist)

    p = cmd("info", "show the current revision")
    p.set_defaults(func=_info)

    p = cmd("serve", "serve the repository over HTTP at http://HOST:PORT/cvmfs/NAME/")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--max-age", type=int, default=61, help="Cache-Control max-age of .cvmfs* files")
    p.set_defaults(func=_serve)


def _notify_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--notify",
        action="append",
        metavar="URL",
        help="announce the new revision to this notification broker (repeatable; default: $RCDS_NOTIFY)",
    )


def _stratum0(args: argparse.Namespace) -> tuple[Stratum0, NotifySender]:
    """The repository, announcing every new revision to the brokers of ``--notify``/``$RCDS_NOTIFY``."""
    sender = NotifySender(servers_from(args.notify), retries=1)
    return Stratum0(_root(args), args.name, on_revision=sender.announce if sender.enabled else None), sender


def public_url(settings: Settings) -> str:
    """Where readers fetch an S3-stored repository over HTTP (empty if unknown or local)."""
    if not settings.storage:
        return ""
    if settings.s3_public_url:
        return settings.s3_public_url
    if settings.s3_endpoint:
        return settings.s3_endpoint.rstrip("/") + "/" + settings.storage.removeprefix("s3://").rstrip("/")
    return ""


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512M or 4G") from None


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root) if args.root else Path(args.name)


def _create(args: argparse.Namespace) -> int:
    chunking: dict[str, int | bool]
    if args.chunk_sizes == "off":
        chunking = {"chunking": False}
    else:
        try:
            lo, avg, hi = (_size(x) for x in args.chunk_sizes.split(","))
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(
                f"--chunk-sizes {args.chunk_sizes!r}: give min,avg,max like 4M,8M,16M"
            ) from None
        chunking = {"chunk_min": lo, "chunk_avg": avg, "chunk_max": hi}
    if args.compression is not None and args.level is not None:
        raise ConfigError("give --compression LIB:LEVEL or --level N (zlib), not both")
    compression = Compression("zlib", args.level) if args.level is not None else DEFAULT
    if args.compression is not None:
        compression = Compression.parse(args.compression)
    settings = Settings(
        name=args.name,
        hash_algorithm=args.hash,
        compression=str(compression),
        ttl=args.ttl,
        whitelist_days=args.whitelist_days,
        storage=args.storage,
        s3_endpoint=args.s3_endpoint,
        s3_region=args.s3_region,
        s3_profile=args.s3_profile,
        s3_acl=args.s3_acl,
        s3_public_url=args.s3_public_url,
        **chunking,  # type: ignore[arg-type]
    )
    layout = create_repository(_root(args), settings)
    print(f"created {args.name} at revision 0 in {layout.root}")
    if settings.storage:
        print(f"served tree: {settings.storage}; readers use {public_url(settings) or 'the bucket URL'}")
    print(f"master public key for clients: {layout.key('pub')}")
    return 0


def _config(args: argparse.Namespace) -> int:
    s0 = Stratum0(_root(args), args.name)
    if args.compression is not None:
        old = s0.settings.compression
        s0.set_compression(Compression.parse(args.compression))
        print(
            f"{args.name}: new objects are written with {s0.settings.compression} (was {old});"
            " objects stored before stay valid"
        )
    st = s0.settings
    used = str(s0.compression)
    print_kv(
        [
            ("name", st.name),
            ("hash", st.hash_algorithm),
            ("compression", st.compression + ("" if used == st.compression else f" (in use: {used})")),
            ("chunk sizes", f"{st.chunk_min},{st.chunk_avg},{st.chunk_max}" if st.chunking else "off"),
            ("ttl", f"{st.ttl} s"),
            ("whitelist validity", f"{st.whitelist_days} days"),
        ]
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    s0, sender = _stratum0(args)
    try:
        return _ingest_into(s0, args)
    finally:
        sender.close(timeout=NOTIFY_WAIT)


def _ingest_into(s0: Stratum0, args: argparse.Namespace) -> int:
    limits = Limits(max_bytes=args.max_bytes)
    if args.tar is not None:
        if args.tar == "-":
            result = s0.ingest_tar(sys.stdin.buffer, args.path, replace=args.replace, limits=limits)
        else:
            with open(args.tar, "rb") as f:
                result = s0.ingest_tar(f, args.path, replace=args.replace, limits=limits)
    else:
        result = s0.ingest_dir(args.dir, args.path, replace=args.replace, limits=limits)
    st = result.stats
    rate = st.bytes_in / result.seconds if result.seconds else 0.0
    print(
        f"published {result.path} as revision {result.revision}: "
        f"{st.files} files, {human_bytes(st.bytes_in)}, "
        f"{st.objects_written} new objects ({human_bytes(st.bytes_written)} stored) "
        f"in {result.seconds:.2f} s ({human_bytes(rate)}/s)"
    )
    return 0


def _rm(args: argparse.Namespace) -> int:
    s0, sender = _stratum0(args)
    try:
        result = s0.remove(args.path)
    finally:
        sender.close(timeout=NOTIFY_WAIT)
    print(f"removed {result.path}; now at revision {result.revision}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    source: Source
    if args.name.startswith(("http://", "https://")):
        if args.key is None:
            raise ConfigError("verifying a URL needs --key MASTER.pub (the repository's master public key)")
        url = args.name.rstrip("/")
        name = url.rsplit("/", 1)[1]
        source = HttpSource.for_url(url)
    else:
        name = args.name
        layout = Layout(_root(args), name)
        # a tree without repo.json (e.g. a copied stratum directory) is read from ROOT/public
        store = layout.open_store(layout.load_settings()) if layout.settings_file.exists() else None
        store = store or LocalStore(layout.public)
        source = StoreSource(store, store.location)
    key_file = args.key or Layout(_root(args), name).key("pub")
    report = verify_repository(source, name, [load_public_key_file(key_file)])
    print(
        f"{name} revision {report.revision} is intact: {report.catalogs} catalogs, {report.entries} entries, "
        f"{report.objects} objects ({human_bytes(report.bytes)}) checked"
    )
    return 0


def _gc(args: argparse.Namespace) -> int:
    r = Stratum0(_root(args), args.name).gc(args.keep_revisions)
    print(
        f"kept {r.revisions_kept} revision(s), {r.reachable} objects reachable; deleted {r.deleted} objects, "
        f"freed {human_bytes(r.bytes_freed)} in {r.seconds:.2f} s"
    )
    return 0


def _resign(args: argparse.Namespace) -> int:
    if args.whitelist_only:
        return _resign_offline(args)
    if args.out or args.certificate or args.master_key or args.days or args.hash:
        raise ConfigError("--master-key, --certificate, --days, --hash and --out go with --whitelist-only")
    s0 = Stratum0(_root(args), args.name)
    wl = s0.resign()
    print(f"whitelist of {args.name} re-signed, valid until {wl.expires:%Y-%m-%d %H:%M} UTC")
    return 0


def _resign_offline(args: argparse.Namespace) -> int:
    """Sign a whitelist away from the repository: master key and certificate are all it needs."""
    if args.out is None:
        raise ConfigError("--whitelist-only needs --out FILE")
    layout = Layout(_root(args), args.name)
    settings = layout.load_settings() if layout.settings_file.exists() else None
    cert_file = args.certificate or (layout.key("crt") if settings else None)
    key_file = args.master_key or (layout.key("masterkey") if settings else None)
    if cert_file is None or key_file is None:
        raise ConfigError(
            f"no repository {args.name} at {layout.root}: give --certificate {args.name}.crt (a copy of the "
            "server's keys/ file) and --master-key"
        )
    try:
        cert_pem = cert_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate {cert_file}: {exc.strerror or exc}") from None
    hash_name = args.hash or (settings.hash_algorithm if settings else "sha1")
    days = args.days or (settings.whitelist_days if settings else 30)
    data = sign_offline(
        args.name,
        load_master_key(key_file, args.name),
        load_certificate(cert_pem, str(cert_file)),
        Algorithm.from_name(hash_name),
        days,
        dt.datetime.now(dt.UTC),
    )
    tmp = args.out.with_name(args.out.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(args.out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"signed a whitelist of {args.name} valid for {days} days into {args.out}")
    print(f"install it on the server: rcds repo install-whitelist {args.name} --root DIR {args.out}")
    return 0


def _install_whitelist(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    wl = Stratum0(_root(args), args.name).install_whitelist(data)
    print(f"installed the whitelist of {args.name}, valid until {wl.expires:%Y-%m-%d %H:%M} UTC")
    return 0


def _info(args: argparse.Namespace) -> int:
    s0 = Stratum0(_root(args), args.name)
    m = s0.manifest()
    age = assess_tree(args.name, s0.layout.public, dt.datetime.now(dt.UTC))
    print_kv(
        [
            ("name", m.repository_name),
            ("revision", str(m.revision)),
            ("published", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(m.timestamp))),
            ("root catalog", m.root_catalog.hex),
            ("certificate", m.certificate.hex),
            ("ttl", f"{m.ttl} s"),
            ("whitelist", _whitelist_text(age)),
            ("served tree", s0.store.location),
            *([("readers use", public_url(s0.settings))] if public_url(s0.settings) else []),
            ("master public key", str(s0.layout.key("pub"))),
        ]
    )
    if age.needs_resign:
        print(f"rcds: warning: {age.message()}; re-sign it: rcds repo resign {args.name}", file=sys.stderr)
    return 0


def _whitelist_text(age: WhitelistAge) -> str:
    if age.expires is None:
        return f"unreadable ({age.error})"
    state = "EXPIRED" if age.state is WhitelistState.EXPIRED else f"{age.days_left} days left"
    return f"expires {age.expires:%Y-%m-%d %H:%M} UTC ({state})"


def _serve(args: argparse.Namespace) -> int:
    layout = Layout(_root(args), args.name)
    settings = layout.load_settings()
    if settings.storage:
        raise ConfigError(
            f"{args.name} lives in {settings.storage}: readers fetch it from the bucket's HTTP endpoint "
            f"({public_url(settings) or 'ENDPOINT/BUCKET/PREFIX'}), not from rcds repo serve"
        )
    server = make_server({args.name: layout.public}, args.host, args.port, root_max_age=args.max_age)
    print(f"serving {args.name} at {server.url_for(args.name)}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
