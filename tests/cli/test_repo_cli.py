"""``rcds repo ...`` and ``rcds demo`` as a user runs them: real processes, real HTTP on loopback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from rcds.testing.processes import free_port

from testkit import rcds

NAME = "cli.example.org"


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / NAME
    out = rcds("repo", "create", NAME, "--root", str(r), "--chunk-sizes", "64K,128K,256K")
    assert "revision 0" in out.stdout
    return r


def test_create_ingest_info_verify_rm_gc(root: Path, tmp_path: Path) -> None:
    tar = tmp_path / "code.tar.gz"
    tar.write_bytes(tarball({"a.txt": b"alpha\n", "lib/b.py": b"print(1)\n"}))
    out = rcds("repo", "ingest", NAME, "--root", str(root), "--tar", str(tar), "--path", "/sw/g/one")
    assert "revision 1" in out.stdout and "3 files" in out.stdout
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_text("x\n")
    rcds("repo", "ingest", NAME, "--root", str(root), "--dir", str(src), "--path", "/sw/g/two")
    rcds(
        "repo",
        "ingest",
        NAME,
        "--root",
        str(root),
        "--tar",
        "-",
        "--path",
        "/sw/g/three",
        stdin=tarball({"c.txt": b"gamma\n"}),
    )
    info = rcds("repo", "info", NAME, "--root", str(root)).stdout
    assert "revision:" in info and " 3" in info
    out = rcds("repo", "verify", NAME, "--root", str(root))
    assert "revision 3 is intact" in out.stdout and "4 catalogs" in out.stdout
    rcds("repo", "rm", NAME, "--root", str(root), "--path", "/sw/g/one")
    out = rcds("repo", "gc", NAME, "--root", str(root), "--keep-revisions", "1")
    assert "deleted" in out.stdout and "deleted 0 objects" not in out.stdout
    rcds("repo", "verify", NAME, "--root", str(root))
    rcds("repo", "resign", NAME, "--root", str(root))


def test_errors_have_clear_messages_and_exit_codes(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tarball at all" * 50)
    out = rcds("repo", "ingest", NAME, "--root", str(root), "--tar", str(bad), "--path", "/sw/x", check=False)
    assert out.returncode == 2 and "rcds: error:" in out.stderr
    out = rcds(
        "repo",
        "ingest",
        NAME,
        "--root",
        str(tmp_path / "nowhere"),
        "--tar",
        str(bad),
        "--path",
        "/x",
        check=False,
    )
    assert out.returncode == 5 and "rcds repo create" in out.stderr
    out = rcds("repo", "create", NAME, "--root", str(root), check=False)
    assert out.returncode == 2 and "already holds a repository" in out.stderr
    # a corrupted object: verify names it and exits 3
    tar = tmp_path / "t.tar"
    tar.write_bytes(tarball({"f.txt": b"some content\n"}))
    rcds("repo", "ingest", NAME, "--root", str(root), "--tar", str(tar), "--path", "/sw/x")
    objects = [p for p in (root / "public" / "data").glob("*/*") if not p.name[-1].isupper()]
    victim = next(p for p in objects if p.stat().st_size > 8)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = rcds("repo", "verify", NAME, "--root", str(root), check=False)
    assert out.returncode == 3 and "hash mismatch" in out.stderr


def test_serve_and_verify_over_http(root: Path, tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(tarball({"hello.txt": b"hello\n"}))
    rcds("repo", "ingest", NAME, "--root", str(root), "--tar", str(tar), "--path", "/sw/g/c")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rcds.cli.main",
            "repo",
            "serve",
            NAME,
            "--root",
            str(root),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/cvmfs/{NAME}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/.cvmfspublished", timeout=5) as resp:
                    assert resp.headers["Cache-Control"] == "max-age=61"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        key = root / "keys" / f"{NAME}.pub"
        out = rcds("repo", "verify", url, "--key", str(key))
        assert "revision 1 is intact" in out.stdout
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/cvmfs/{NAME}/../keys/{NAME}.key", timeout=5)
        assert err.value.code == 404
        out = rcds("repo", "verify", url, check=False)
        assert out.returncode == 2 and "--key" in out.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stdout and server.stderr
        server.stdout.close()
        server.stderr.close()


def test_demo_runs_the_whole_flow_on_embedded_defaults(tmp_path: Path) -> None:
    out = rcds("demo", "--workdir", str(tmp_path))
    assert "demo complete" in out.stdout and "Published with rcds." in out.stdout
    assert "2. published" in out.stdout
    readme = (tmp_path / "job" / "code" / "README.md").read_bytes()
    assert readme == b"# analysis code\n\nPublished with rcds.\n"
    # a second run finds the same code already published (same CID: reproducible packing)
    again = rcds("demo", "--workdir", str(tmp_path)).stdout
    assert "already present" in again
    cid = next(w for w in out.stdout.split() if w.startswith("demo/"))
    assert cid in again


def test_keys_are_not_served(root: Path) -> None:
    assert not any(
        "key" in p.name for p in (root / "public").rglob("*") if p.is_file() and "data" not in p.parts
    )
    assert oct(os.stat(root / "keys" / f"{NAME}.masterkey").st_mode & 0o777) == "0o600"
