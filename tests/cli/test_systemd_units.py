"""The sample systemd units of examples/systemd: they parse (systemd-analyze verify when the machine
has it, and a strict parser here in any case), use the paths of docs/service.md, and their
``rcds`` command lines are accepted by rcds' own argument parser."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rcds.cli.main import build_parser

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"
SECTIONS = {
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires", "Before"},
    "Service": {
        "Type", "User", "Group", "ExecStartPre", "ExecStart", "ExecStopPost", "ExecReload", "KillSignal",
        "TimeoutStopSec", "Restart", "RestartSec", "StateDirectory", "StateDirectoryMode",
        "ConfigurationDirectory", "NoNewPrivileges", "PrivateTmp", "ProtectSystem", "ProtectHome",
        "ReadWritePaths", "LimitNOFILE", "Environment",
    },
    "Install": {"WantedBy"},
}  # fmt: skip
EXPECTED = {
    "rcds-server.service": ["server", "run", "--config", "/etc/rcds/server.toml"],
    "rcds-replica.service": ["replica", "run", "--config", "/etc/rcds/replica.toml"],
    "rcds-mount.service": ["mount", "--root", "/cvmfs", "--foreground"],
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) lines; AssertionError for anything systemd would not take."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{n}: bad section header"
            current = line[1:-1]
            assert current in SECTIONS, f"{path.name}:{n}: unknown section {current}"
            sections[current] = []
            continue
        assert current is not None, f"{path.name}:{n}: a setting before any section"
        key, sep, value = line.partition("=")
        assert sep and key == key.strip(), f"{path.name}:{n}: not key=value"
        assert key in SECTIONS[current], f"{path.name}:{n}: {key} is not a key of [{current}] we know"
        sections[current].append((key, value))
    return sections


def rcds_argv(command: str) -> list[str] | None:
    """The arguments after ``rcds`` of an Exec line that runs rcds (None for other programs)."""
    argv = shlex.split(command.lstrip("-@:+!"))
    return argv[1:] if Path(argv[0]).name == "rcds" else None


def known_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unit_parses_and_names_an_existing_command(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = dict(unit["Service"])
    assert set(unit) == {"Unit", "Service", "Install"}
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    argv = rcds_argv(service["ExecStart"])
    assert argv == EXPECTED[name]
    if argv[0] not in known_commands():
        pytest.skip(f"rcds {argv[0]} is not on this branch yet (a teammate's command)")
    execs = [v for k, v in unit["Service"] if k.startswith("Exec")]
    for line in execs:
        args = rcds_argv(line)
        if args is None:
            continue
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"{name}: rcds does not take: {' '.join(args)}") from exc
        assert callable(parsed.func)


def test_server_unit_uses_the_paths_of_the_service_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    service = dict(parse_unit(UNITS / "rcds-server.service")["Service"])
    assert "/etc/rcds/server.toml" in docs and "/var/lib/rcds" in docs
    assert service["ExecStartPre"].endswith("rcds server check --config /etc/rcds/server.toml")
    assert service["ReadWritePaths"] == "/var/lib/rcds" and service["StateDirectory"] == "rcds"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    rcds = Path(sys.executable).parent / "rcds"
    assert rcds.exists()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/rcds/bin/rcds", str(rcds))  # the installed rcds here
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 3
    res = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Unknown" not in out and "not executable" not in out, out
