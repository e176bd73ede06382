"""``rcds demo``: the whole flow on embedded defaults, end to end on this machine.

Start the publishing service (two repositories, pubapi and repository server on loopback),
publish a sample directory through the API like a submit host, wait for it like a job on a
worker node (through the verifying client library: no mount needed), read a file of it, and
verify the repository over HTTP.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from rcds.cli.output import human_bytes

SAMPLE = {
    "README.md": b"# analysis code\n\nPublished with rcds.\n",
    "bin/run.sh": b'#!/bin/sh\nexec python3 -m analysis "$@"\n',
    "analysis/__init__.py": b"VERSION = '1.0'\n",
    "analysis/__main__.py": b"from analysis import VERSION\nprint('analysis', VERSION)\n",
    "data/calibration.txt": b"".join(b"%d %f\n" % (i, i * 0.5) for i in range(20000)),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="run the whole flow on embedded defaults: service, publish, wait, read")
    p.add_argument("--workdir", type=Path, help="where to keep everything (default: a temporary directory)")
    p.set_defaults(func=run)


def write_sample(root: Path) -> Path:
    """A small user-code directory (Python package, script, data, a symlink)."""
    code = root / "mycode"
    for name, data in SAMPLE.items():
        path = code / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (code / "bin" / "run.sh").chmod(0o755)
    link = code / "latest"
    if not link.is_symlink():
        link.symlink_to("analysis")
    return code


def run(args: argparse.Namespace) -> int:
    """Run the demo; print what happens at each step."""
    # Imported here, not at the top: ``rcds --help`` imports this module too, and the service
    # (aiohttp) and the publisher (numpy) are most of a second of start-up.
    from rcds.format.keys import load_public_key_file
    from rcds.jobs.submit import publish_code
    from rcds.jobs.wait import ClientAccess, wait_for_code
    from rcds.repo.http_source import HttpSource
    from rcds.repo.verify import verify_repository
    from rcds.service.config import ListenConfig, ServeConfig, ServiceConfig
    from rcds.service.runner import ServiceThread

    with tempfile.TemporaryDirectory(prefix="rcds-demo-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        cfg = dataclasses.replace(
            ServiceConfig.default(root / "server"),
            listen=ListenConfig("127.0.0.1", 0),
            serve=ServeConfig("127.0.0.1", 0),
        )
        with ServiceThread(cfg) as svc:
            print(f"1. service up: pubapi {svc.url}/pubapi/, repositories {', '.join(cfg.repositories)}")
            code = write_sample(root)
            t0 = time.monotonic()
            out = publish_code(code, "demo", [svc.url], workdir=root, wait=True, wait_timeout=120)
            verb = "published" if out.uploaded else "already present, stamped"
            print(
                f"2. {verb} {code} as {out.cid}\n   ({human_bytes(out.size)} tarball) -> {out.path} "
                f"in {time.monotonic() - t0:.2f} s"
            )
            keys = tuple(cfg.state_dir / r / "keys" / f"{r}.pub" for r in cfg.repositories)
            urls = tuple(svc.repo_url(r) for r in cfg.repositories)
            access = ClientAccess(urls=urls, keys=keys, cache_dir=root / "client-cache")
            job_dir = root / "job"
            job_dir.mkdir(exist_ok=True)
            waited = wait_for_code(
                out.cid,
                list(cfg.repositories),
                timeout=60,
                link=job_dir / "code",
                cvmfs_root=None,
                access=access,
            )
            print(
                f"3. job side: rcds wait found {waited.found.repository}:{waited.found.repo_path} "
                f"in {waited.seconds:.2f} s and put it at {waited.linked}"
            )
            readme = (job_dir / "code" / "README.md").read_text()
            print("4. cat code/README.md:")
            for line in readme.splitlines():
                print(f"     {line}")
            repo = waited.found.repository
            source = HttpSource.for_url(svc.repo_url(repo))
            try:
                key = load_public_key_file(cfg.state_dir / repo / "keys" / f"{repo}.pub")
                report = verify_repository(source, repo, [key])
            finally:
                source.close()
            print(
                f"5. verified {repo} revision {report.revision} over HTTP: {report.catalogs} catalogs, "
                f"{report.entries} entries, {report.objects} objects"
            )
    print("demo complete")
    return 0
