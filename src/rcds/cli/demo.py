"""``rcds demo``: the main job on embedded defaults, end to end on this machine.

Create a repository, publish a sample tarball, serve it over HTTP on loopback, read it back
through HTTP with full verification, and verify the whole repository over HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

from rcds.cli.output import human_bytes
from rcds.format.keys import load_public_key_file
from rcds.publish.create import create_repository
from rcds.publish.layout import Layout, Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.http_source import HttpSource
from rcds.repo.verify import verify_repository
from rcds.repo.view import open_view
from rcds.serve.http import make_server

DEMO_REPO = "demo.example.org"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="publish a sample tarball and read it back over HTTP (embedded defaults)")
    p.add_argument(
        "--workdir", type=Path, help="where to keep the repository (default: a temporary directory)"
    )
    p.set_defaults(func=run)


def sample_tarball() -> bytes:
    """A small but realistic user-code tarball (Python package, script, data, links)."""
    buf = io.BytesIO()
    files = {
        "README.md": b"# analysis code\n\nPublished with rcds.\n",
        "bin/run.sh": b'#!/bin/sh\nexec python3 -m analysis "$@"\n',
        "analysis/__init__.py": b"VERSION = '1.0'\n",
        "analysis/__main__.py": b"from analysis import VERSION\nprint('analysis', VERSION)\n",
        "data/calibration.txt": b"".join(b"%d %f\n" % (i, i * 0.5) for i in range(20000)),
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            ti.mode = 0o755 if name.endswith(".sh") else 0o644
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("latest")
        link.type = tarfile.SYMTYPE
        link.linkname = "analysis"
        tf.addfile(link)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    """Run the demo; print what happens at each step."""
    with tempfile.TemporaryDirectory(prefix="rcds-demo-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        repo_root = root / DEMO_REPO
        layout = Layout(repo_root, DEMO_REPO)
        if not layout.settings_file.exists():
            create_repository(repo_root, Settings(name=DEMO_REPO, ttl=15))
            print(f"1. created repository {DEMO_REPO} in {repo_root}")
        else:
            print(f"1. using repository {DEMO_REPO} in {repo_root}")
        tarball = sample_tarball()
        cid = "demo/" + hashlib.sha256(tarball).hexdigest()
        target = f"/sw/{cid}"
        result = Stratum0(repo_root, DEMO_REPO).ingest_tar(io.BytesIO(tarball), target, replace=True)
        print(
            f"2. published a {human_bytes(len(tarball))} tarball at {target} as revision {result.revision} "
            f"in {result.seconds:.2f} s"
        )
        with make_server({DEMO_REPO: layout.public}) as server:
            server.start_background()
            url = server.url_for(DEMO_REPO)
            print(f"3. serving at {url}/")
            key = load_public_key_file(layout.key("pub"))
            source = HttpSource.for_url(url)
            with open_view(source, DEMO_REPO, [key]) as view:
                names = [d.name for d in view.listdir(target)]
                print(f"4. read over HTTP, verified: ls {target} -> {' '.join(names)}")
                readme = view.read(f"{target}/README.md").decode()
                print(f"   cat {target}/README.md:")
                for line in readme.splitlines():
                    print(f"     {line}")
            report = verify_repository(source, DEMO_REPO, [key])
            print(
                f"5. verified revision {report.revision} over HTTP: {report.catalogs} catalogs, "
                f"{report.entries} entries, {report.objects} objects"
            )
            source.close()
    print("demo complete")
    return 0
