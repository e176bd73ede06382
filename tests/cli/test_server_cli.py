"""``rcds server check`` and the hints of ``rcds server run``: the first run as real processes, the
rest through ``rcds.cli.main.main`` in this process (the same code, without a start-up per call)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from rcds.cli.main import main

from testkit import rcds, self_signed

REPOS = ["check1.example.org"]


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``rcds server check ARGS`` in this process: (exit status, stdout)."""
    code = main(["server", "check", *args])
    return code, capsys.readouterr().out


def write_config(base: Path, text: str = "", *, listen: int = 0, serve: int = 0) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / "server.toml"
    path.write_text(
        f'base_dir = "{base}"\nrepositories = {json.dumps(REPOS)}\n'
        f"[listen]\nport = {listen}\n[serve]\nport = {serve}\n{text}"
    )
    return path


def test_run_on_a_fresh_base_names_the_init_command_the_user_needs(tmp_path: Path) -> None:
    base = tmp_path / "fresh base"
    r = rcds("server", "run", "--base", str(base), check=False)
    assert r.returncode != 0
    assert f"create them with: rcds server init --base '{base}'" in r.stderr
    cfg = write_config(tmp_path / "cfg")
    r = rcds("server", "run", "--config", str(cfg), check=False)
    assert r.returncode != 0
    assert f"create them with: rcds server init --config {cfg}" in r.stderr


def test_check_a_fresh_base_says_to_init_then_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "svc")
    code, out = check(capsys, "--config", str(cfg))
    assert code == 1
    assert f"ERROR repository check1.example.org: not created under {tmp_path / 'svc' / 'repos'}" in out
    assert f"run: rcds server init --config {cfg}" in out
    assert main(["server", "init", "--config", str(cfg)]) == 0
    code, out = check(capsys, "--config", str(cfg))
    assert code == 0, out
    assert "ERROR" not in out and out.rstrip().endswith("the configuration is usable")
    code, out = check(capsys, "--base", str(tmp_path / "other"))
    assert code == 1 and "run: rcds server init --base" in out


def test_check_reports_every_problem_with_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "svc"
    base.mkdir()
    cert, _key = self_signed(base, "host")
    _other_cert, other_key = self_signed(base, "other")
    empty_ca_dir = base / "certificates"
    empty_ca_dir.mkdir()
    (empty_ca_dir / "README").write_text("no certificates here\n")
    bad_jwks = base / "issuer.jwks"
    bad_jwks.write_text("this is not a key\n")
    keys_dir = base / "partner-keys"
    keys_dir.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(
            base,
            f'[tls]\ncert_file = "{cert}"\nkey_file = "{other_key}"\nca_dir = "{empty_ca_dir}"\n'
            f'[auth]\ngrid_mapfile = "{base / "missing-grid-mapfile"}"\n'
            f'[[auth.token_issuers]]\nissuer = "https://issuer.example"\nkeys = ["{bad_jwks}"]\n'
            f'audience = ["rcds"]\n'
            f'[replica]\npartner_url = "https://partner.example:8443"\n'
            f'partner_repository_url = "http://partner.example:8000/cvmfs/@fqrn@"\n'
            f'partner_keys_dir = "{keys_dir}"\n',
            listen=port,
        )
        code, out = check(capsys, "--config", str(cfg))
    assert code == 1
    assert f"ERROR listen: cannot listen on 127.0.0.1 port {port}: in use by another process" in out
    assert f"ERROR tls.ca_dir/ca_file: {empty_ca_dir}: no CA certificates" in out
    assert "ERROR tls.cert_file/key_file: the certificate and key do not load together" in out
    assert f"ERROR auth.grid_mapfile: cannot read {base / 'missing-grid-mapfile'}" in out
    assert f"ERROR auth.token_issuers[0].keys (https://issuer.example): {bad_jwks}" in out
    assert "ERROR replica.partner_keys_dir: 0 partner keys" in out
    assert "ERROR repository check1.example.org" in out
    assert "ok    serve: 127.0.0.1 port 0" in out
    assert out.rstrip().endswith("problems found")


def test_check_of_a_config_that_does_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text('repositories = ["x.example.org"]\nno_such_key = 1\n')
    code, out = check(capsys, "--config", str(cfg))
    assert code == 1
    assert out.startswith(f"ERROR configuration: {cfg}") and "no_such_key" in out
    code, out = check(capsys, "--config", str(tmp_path / "absent.toml"))
    assert code == 1 and "cannot read config file" in out
