"""The client commands (``rcds ls/cat/stat/get/info/config show``) against real servers."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.cli.main import main

from testkit import NAME

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(60)

C1 = "/sw/g/c1"


def opts(site: Site, *, cache: Path | None = None) -> list[str]:
    out = [
        "--config-dir",
        str(site.work / "no-etc"),
        "--key",
        str(site.key),
        "--cache",
        str(cache or site.cache_dir),
    ]
    for url in site.urls:
        out += ["--server", url]
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_stat(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    o = opts(site)
    code, out, _ = run(capsys, "ls", *o, f"{NAME}:{C1}/a")
    assert code == 0 and out.split() == ["big.bin", "empty", "hello.txt", "hl", "link", "run.sh"]
    code, out, _ = run(capsys, "ls", *o, NAME)
    assert (code, out) == (0, "sw\n")
    code, out, _ = run(capsys, "ls", "-l", *o, f"{NAME}:{C1}/a")
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in out.splitlines()}
    assert lines["run.sh"].startswith("-rwxr-xr-x")
    assert lines["hello.txt"].split()[1] == "2"  # link count of the hard-link pair
    assert lines["link"].startswith("lrwxrwxrwx") and lines["link"].endswith("link -> hello.txt")
    code, out, _ = run(capsys, "ls", *o, f"{NAME}:{C1}/a/hello.txt")
    assert out == "hello.txt\n"

    code, out, _ = run(capsys, "stat", *o, f"{NAME}:{C1}/a/big.bin")
    assert code == 0 and "regular file" in out and f"size:       {len(site.big)}" in out and "chunks:" in out
    code, out, _ = run(capsys, "stat", *o, f"{NAME}:{C1}/a/link")
    assert "symbolic link" in out and "target:   hello.txt" in out
    code, out, _ = run(capsys, "stat", "-L", *o, f"{NAME}:{C1}/a/link")
    assert "regular file" in out and "content:" in out


def test_cat(site: Site, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code = main(["cat", *opts(site), f"{NAME}:{C1}/a/hello.txt", f"{NAME}:{C1}/a/big.bin"])
    assert code == 0
    assert capsysbinary.readouterr().out == site.files[f"{C1}/a/hello.txt"] + site.big


def tree(root: Path) -> dict[str, tuple[str, object, int]]:
    out: dict[str, tuple[str, object, int]] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def test_get_copies_a_subtree_and_resumes(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    code, out, err = run(capsys, "get", *opts(site), f"{NAME}:{C1}", str(dest))
    assert code == 0, err
    assert "copied" in out and "1 hard links" in out and err == ""  # no progress bar without a terminal
    got = tree(dest)
    for path, data in site.files.items():
        if path.startswith(C1):
            assert got[path[len(C1) + 1 :]][1] == data
    for path, target in site.links.items():
        assert got[path[len(C1) + 1 :]] == ("link", target, 0)  # written as links, not followed
    assert got["a/run.sh"][2] == 0o755 and got["a/hello.txt"][2] == 0o644
    assert os.stat(dest / "a/hello.txt").st_ino == os.stat(dest / "a/hl").st_ino
    assert os.stat(dest / "a/run.sh").st_mtime == 1_700_000_000
    assert not (dest / ".rcds-get.json").exists()  # the resume state is kept in the cache directory
    assert not list(dest.rglob("*.tmp"))

    # A second run (same cache directory: the resume state is there) finds everything in place
    # and downloads nothing.
    before = site.fetched("data/")
    code, out, _ = run(capsys, "get", *opts(site), f"{NAME}:{C1}", str(dest))
    assert code == 0 and "6 already up to date" in out
    fetched_catalogs_and_cert = site.fetched("data/") - before
    # An interrupted run (a file missing, another one changed) redoes only those.
    (dest / "b/c/d.txt").unlink()
    (dest / "a/run.sh").write_bytes(b"changed")
    before = site.fetched("data/")
    code, out, _ = run(capsys, "get", *opts(site), f"{NAME}:{C1}", str(dest))
    assert code == 0 and "4 already up to date" in out
    assert site.fetched("data/") - before == fetched_catalogs_and_cert + 2
    assert tree(dest) == got

    # A single file goes into an existing directory.
    code, out, _ = run(capsys, "get", *opts(site), f"{NAME}:{C1}/a/link", str(tmp_path))
    assert (tmp_path / "link").read_bytes() == site.files[f"{C1}/a/hello.txt"]


def test_get_never_writes_outside_the_destination(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest, victim = tmp_path / "out", tmp_path / "victim"
    (dest / "b" / "c").mkdir(parents=True)
    victim.mkdir()
    (victim / "keep").write_text("precious")
    (dest / "a").symlink_to(victim)  # planted: a symlink where a directory of the repository goes
    (dest / "b" / "c" / "d.txt").symlink_to(victim / "keep")
    code, _, err = run(capsys, "get", *opts(site), f"{NAME}:{C1}", str(dest))
    assert code == 0, err
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]
    assert (victim / "keep").read_text() == "precious"
    assert (dest / "a").is_dir() and not (dest / "a").is_symlink()
    assert not (dest / "b/c/d.txt").is_symlink() and (dest / "b/c/d.txt").read_bytes() == b"deep\n"


def test_get_shows_progress_on_a_terminal(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, "get", *opts(site), f"{NAME}:{C1}", str(tmp_path / "o"))
    assert code == 0 and "\r" in err and "files" in err and err.endswith("\n")
    code, _, err = run(capsys, "get", "--no-progress", *opts(site), f"{NAME}:{C1}", str(tmp_path / "p"))
    assert code == 0 and err == ""


def test_info(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", *opts(site), NAME)
    assert code == 0
    assert "revision:     2" in out and "state:        online" in out
    for url in site.urls:
        assert url in out
    assert "DIRECT" in out and " ms" in out  # the hosts were probed


def test_info_warns_when_the_whitelist_expires_soon(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", *opts(site), NAME)
    assert code == 0 and re.search(r"\(whitelist expires in (29|30) days\)", out) and err == ""  # fresh
    site.sign_whitelist(site.public, dt.datetime.now(dt.UTC) + dt.timedelta(days=5, hours=1))
    code, out, err = run(capsys, "info", *opts(site, cache=site.work / "c2"), NAME)
    assert code == 0 and "(whitelist expires in 5 days)" in out
    assert f"rcds: warning: the whitelist of {NAME} expires in 5 days" in err


def test_config_show_names_the_file_of_each_value(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    (etc / "domain.d").mkdir(parents=True)
    (etc / "default.local").write_text("# site defaults\nCVMFS_QUOTA_LIMIT=100\nCVMFS_HTTP_PROXY=DIRECT\n")
    (etc / "domain.d" / "example.org.conf").write_text(
        f"CVMFS_SERVER_URL={site.urls[0].replace(NAME, '@fqrn@')}\n"
    )
    code, out, _ = run(capsys, "config", "show", "--config-dir", str(etc), NAME)
    assert code == 0
    lines = {line.split("=", 1)[0]: line for line in out.splitlines() if "=" in line}
    assert lines["CVMFS_QUOTA_LIMIT"].endswith(f"# {etc}/default.local:2")
    assert lines["CVMFS_SERVER_URL"].endswith(f"# {etc}/domain.d/example.org.conf:1")
    assert lines["CVMFS_TIMEOUT"].endswith("# <built-in default>")
    assert "rcds cache directory" in out
    # The configuration alone is enough to read the repository.
    code, out, err = run(
        capsys,
        "cat",
        "--config-dir",
        str(etc),
        "--key",
        str(site.key),
        "--cache",
        str(tmp_path / "c"),
        f"{NAME}:{C1}/b/c/d.txt",
    )
    assert code == 0, err


def test_errors_have_exit_codes_and_hints(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "ls", "--config-dir", str(tmp_path), "--cache", str(tmp_path / "c"), f"{NAME}:/"
    )
    assert code == 2 and "--server" in err
    code, _, err = run(capsys, "ls", *opts(site), f"{NAME}:/nope")
    assert code == 5 and "no such file" in err
    other = tmp_path / "other.pub"
    from rcds.format import keys

    other.write_bytes(keys.public_key_pem(keys.generate_key().public_key()))
    code, _, err = run(
        capsys,
        "ls",
        "--server",
        site.urls[0],
        "--key",
        str(other),
        "--cache",
        str(tmp_path / "c2"),
        f"{NAME}:/",
    )
    assert code == 3 and "master public key" in err
    for srv in site.servers:
        srv.stop()
    code, _, err = run(capsys, "ls", *opts(site, cache=tmp_path / "c3"), f"{NAME}:/")
    assert code == 6 and "cannot download" in err
    code, _, err = run(capsys, "ls", *opts(site), "not a name:/")
    assert code == 2


@pytest.mark.parametrize("flag", [[], ["--no-cache"]])
def test_get_does_not_fill_the_cache_by_default(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: list[str]
) -> None:
    from rcds.client.cache.local import LocalCache

    cache = tmp_path / "c"
    code, _, err = run(
        capsys, "get", *flag, "-j", "2", *opts(site, cache=cache), f"{NAME}:{C1}", str(tmp_path / "o")
    )
    assert code == 0, err
    assert (tmp_path / "o/a/big.bin").read_bytes() == site.big
    with LocalCache(cache) as c:
        assert {e.kind for e in c.entries()} == {"C", "X"}  # catalogs and certificate only


def test_get_fills_the_cache_when_asked(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from rcds.client.cache.local import LocalCache

    cache = tmp_path / "c"
    code, _, err = run(
        capsys, "get", "--fill-cache", *opts(site, cache=cache), f"{NAME}:{C1}", str(tmp_path / "o")
    )
    assert code == 0, err
    with LocalCache(cache) as c:
        kinds = [e.kind for e in c.entries()]
    assert "" in kinds and "P" in kinds  # whole-file objects and chunks of the chunked file
    before = site.fetched("data/")
    code, _, err = run(capsys, "get", *opts(site, cache=cache), f"{NAME}:{C1}", str(tmp_path / "o2"))
    assert code == 0, err
    assert site.fetched("data/") == before  # everything from the cache
    assert (tmp_path / "o2/a/big.bin").read_bytes() == site.big


def test_get_on_the_command_line_ends_at_once_with_everything_said_and_saved(
    site: Site, tmp_path: Path
) -> None:
    """``rcds get`` run as a command ends without the interpreter's clean-up
    (:func:`rcds.cli.main.exit_at_once`): its report still reaches a pipe, the copy and its
    resume state are complete, and the exit status is the command's."""
    import subprocess

    cache = tmp_path / "cache"
    dest = tmp_path / "out"
    argv = [sys.executable, "-m", "rcds.cli.main", "get", *opts(site, cache=cache), f"{NAME}:{C1}", str(dest)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"copied {NAME}:{C1}") and done.stdout.endswith("s\n")
    for path, data in site.files.items():
        if path.startswith(C1):
            assert (dest / path[len(C1) + 1 :]).read_bytes() == data
    assert len(list((cache / "get-state").glob("*.json"))) == 1  # saved before the exit
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr
    (tmp_path / "file").write_bytes(b"x")  # an error still ends the usual way, with its status
    bad = subprocess.run([*argv[:-1], str(tmp_path / "file")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
