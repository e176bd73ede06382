"""``rcds exec`` as an unprivileged user (created by the test), with real FUSE mounts.

Each test publishes a small repository, serves it on loopback, and runs ``rcds exec`` through
``runuser`` as a pilot would. Checked: the files through ``/cvmfs``, the mode it says it used,
the exit code passed through, signals passed on, and that nothing (process, mount, runtime
directory) is left when the command ends or when ``rcds exec`` is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import FILES, TREE, Node, dev_fuse_mode, fuse_mounts_of, node

from testkit import NAME

pytestmark = pytest.mark.timeout(180)

READ = (
    f'cat "$RCDS_ROOT/{NAME}{TREE}/hello.txt" && cmp "$RCDS_ROOT/{NAME}{TREE}/sub/data.bin" {{data}} && id -u'
)


@pytest.fixture(scope="module")
def site() -> Iterator[Node]:
    with node() as n:
        (n.base / "data.bin").write_bytes(FILES["sub/data.bin"])
        (n.base / "data.bin").chmod(0o644)
        yield n


def _exec(site: Node, script: str, *extra: str, userns: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["exec", "--repos", NAME, *extra, *site.access, "--", "sh", "-c", script]
    return site.run(args, no_userns=not userns)


def _assert_clean(site: Node) -> None:
    left = site.wait_no_processes()
    assert left == [], f"processes left behind: {left}"
    assert fuse_mounts_of(site.user.pw_uid) == []
    runtime = site.runtime_dir()
    assert not runtime.exists() or list(runtime.iterdir()) == []


MODES = {
    # name: (/dev/fuse mode, extra rcds exec options, user namespaces allowed, expected mode, in /cvmfs)
    "userns": (0o666, (), True, "userns", True),
    "fusermount+namespace": (0o666, ("--mode", "fusermount"), True, "fusermount", True),
    "fusermount, no namespaces": (0o666, (), False, "fusermount", False),
}


@pytest.mark.parametrize("case", list(MODES))
def test_the_command_sees_the_repository_and_its_exit_code_is_passed_on(site: Node, case: str) -> None:
    fuse_mode, extra, userns, expected, in_cvmfs = MODES[case]
    script = READ.format(data=site.base / "data.bin") + ' && echo "root=$RCDS_ROOT"; exit 7'
    with dev_fuse_mode(fuse_mode):
        result = _exec(site, script, *extra, userns=userns)
    assert result.returncode == 7, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == FILES["hello.txt"].decode().strip()
    assert lines[1] == str(site.user.pw_uid)  # the user's own uid, not namespace root
    if in_cvmfs:
        assert lines[2] == "root=/cvmfs"
    else:
        assert lines[2].startswith(f"root={site.runtime_dir()}/mnt-")
    assert f"rcds exec: {expected} mode" in result.stderr
    _assert_clean(site)


def test_dev_fuse_0600_no_mode_and_a_clear_error(site: Node) -> None:
    marker = site.home / "ran-0600"
    with dev_fuse_mode(0o600):
        result = site.run(["exec", *site.access, "--", "touch", str(marker)])
    assert result.returncode == 2
    assert "cannot mount here" in result.stderr and "chmod 0666 /dev/fuse" in result.stderr
    assert "rcds get" in result.stderr
    assert not marker.exists()
    _assert_clean(site)


def test_a_missing_command_is_127_and_cleans_up(site: Node) -> None:
    with dev_fuse_mode(0o666):
        result = site.run(["exec", "--repos", NAME, *site.access, "--", "/no/such/program"])
    assert result.returncode == 127
    assert "cannot run /no/such/program" in result.stderr
    _assert_clean(site)


def test_an_unknown_repository_fails_before_the_command_runs(site: Node) -> None:
    marker = site.home / "ran"
    with dev_fuse_mode(0o666):
        result = site.run(
            ["exec", "--repos", "nope.example.org", *site.access, "--", "touch", str(marker)], timeout=120
        )
    assert result.returncode != 0
    assert "nope.example.org" in result.stderr
    assert not marker.exists()
    _assert_clean(site)


def _start_and_wait(
    site: Node, script: str, marker: Path, *extra: str, userns: bool = True
) -> subprocess.Popen[str]:
    args = ["exec", "-q", "--repos", NAME, *extra, *site.access, "--", "sh", "-c", script]
    proc = site.start(args, no_userns=not userns)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("case", list(MODES))
def test_sigkill_of_rcds_exec_leaves_nothing_behind(site: Node, case: str) -> None:
    fuse_mode, extra, userns, _, _ = MODES[case]
    marker = site.home / f"started-{len(case)}"
    marker.unlink(missing_ok=True)
    # In a PID namespace even the command's orphans go; without one only its own process is followed.
    listing = f'ls "$RCDS_ROOT/{NAME}{TREE}" >/dev/null'
    if userns:
        script = f"{listing} && (sleep 300 &) && sleep 300 & touch {marker}; wait"
    else:
        script = f"{listing} && touch {marker} && exec sleep 300"
    with dev_fuse_mode(fuse_mode):
        proc = _start_and_wait(site, script, marker, *extra, userns=userns)
        assert len(site.processes()) >= 3  # rcds exec, the mount daemon, the command
        exec_pid = next(pid for pid, cmd in site.processes() if "rcds.cli.main exec" in cmd)
        os.kill(exec_pid, signal.SIGKILL)
        proc.wait(30)
        left = site.wait_no_processes()
        assert left == [], f"processes left behind: {left}"
        assert fuse_mounts_of(site.user.pw_uid) == []
        # An empty runtime directory may stay after SIGKILL; the next rcds exec removes it.
        assert _exec(site, "true", *extra, userns=userns).returncode == 0
    _assert_clean(site)


def test_sigterm_is_passed_on_to_the_command(site: Node) -> None:
    marker = site.home / "trap-ready"
    script = f"trap 'exit 42' TERM; touch {marker}; while :; do sleep 0.1; done"
    with dev_fuse_mode(0o666):
        proc = _start_and_wait(site, script, marker)
        exec_pid = next(pid for pid, cmd in site.processes() if "rcds.cli.main exec" in cmd)
        os.kill(exec_pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 42
    _assert_clean(site)
