"""``rcds repo info`` warns before the whitelist expires; ``rcds repo resign`` re-signs it here, or
``--whitelist-only`` signs it on a machine that holds the master key and ``install-whitelist``
installs it on the server (checked as clients check it; a bad file changes nothing)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from rcds.cli.main import main
from rcds.format import keys
from rcds.format import whitelist as whitelist_fmt
from rcds.format.hashes import Algorithm
from rcds.publish.layout import Layout
from rcds.publish.stratum0 import Stratum0
from rcds.publish.whitelist_sign import make_whitelist

NAME = "wl.example.org"
pytestmark = pytest.mark.timeout(60)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    r = tmp_path / NAME
    assert run(capsys, "repo", "create", NAME, "--root", str(r), "--whitelist-days", "12")[0] == 0
    return r


def served(root: Path) -> whitelist_fmt.Whitelist:
    return whitelist_fmt.parse((root / "public" / ".cvmfswhitelist").read_bytes()).whitelist


def age_whitelist(root: Path, days_left: float) -> None:
    """Re-sign the repository's whitelist as if made long ago, ``days_left`` days before expiry."""
    layout = Layout(root, NAME)
    master = keys.load_private_key(layout.key("masterkey").read_bytes())
    cert = keys.load_certificate(layout.key("crt").read_bytes())
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=12 - days_left)
    wl = make_whitelist(NAME, cert, Algorithm.SHA1, 12, created)
    (root / "public" / ".cvmfswhitelist").write_bytes(wl.sign(master))


def test_info_warns_and_resign_renews(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "repo", "info", NAME, "--root", str(root))
    assert code == 0 and "(12 days left)" in out and err == ""
    age_whitelist(root, 3.5)  # less than a third of 12 days left
    code, out, err = run(capsys, "repo", "info", NAME, "--root", str(root))
    assert code == 0 and "(3 days left)" in out
    assert f"rcds: warning: the whitelist of {NAME} expires in 3 days" in err and "rcds repo resign" in err
    code, out, _ = run(capsys, "repo", "resign", NAME, "--root", str(root))
    assert code == 0 and "re-signed" in out
    assert served(root).expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=11)
    assert run(capsys, "repo", "verify", NAME, "--root", str(root))[0] == 0


def test_master_key_kept_elsewhere(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vault = tmp_path / "vault"  # the machine holding the master key
    vault.mkdir()
    keys_dir = root / "keys"
    shutil.move(keys_dir / f"{NAME}.masterkey", vault / f"{NAME}.masterkey")
    shutil.copy(keys_dir / f"{NAME}.crt", vault / f"{NAME}.crt")
    age_whitelist_with(vault, root, 2)
    before = (root / "public" / ".cvmfswhitelist").read_bytes()

    # the server cannot re-sign: a clear error naming the way out, nothing changed
    code, _, err = run(capsys, "repo", "resign", NAME, "--root", str(root))
    assert code == 2 and "cannot read the master key" in err and "--whitelist-only" in err
    assert (root / "public" / ".cvmfswhitelist").read_bytes() == before

    # signed in the vault (no repository there), then installed on the server
    out_file = vault / "whitelist.signed"
    code, out, err = run(
        capsys, "repo", "resign", NAME, "--root", str(vault / "none"), "--whitelist-only",
        "--master-key", str(vault / f"{NAME}.masterkey"), "--certificate", str(vault / f"{NAME}.crt"),
        "--days", "12", "--out", str(out_file),
    )  # fmt: skip
    assert code == 0 and "install-whitelist" in out, err
    assert (root / "public" / ".cvmfswhitelist").read_bytes() == before  # only the file was written
    code, _out, err = run(capsys, "repo", "install-whitelist", NAME, "--root", str(root), str(out_file))
    assert code == 0, err
    assert (root / "public" / ".cvmfswhitelist").read_bytes() == out_file.read_bytes()
    assert served(root).expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=11)
    assert run(capsys, "repo", "verify", NAME, "--root", str(root))[0] == 0
    code, _, err = run(capsys, "repo", "info", NAME, "--root", str(root))
    assert code == 0 and err == ""


def age_whitelist_with(vault: Path, root: Path, days_left: float) -> None:
    master = keys.load_private_key((vault / f"{NAME}.masterkey").read_bytes())
    cert = keys.load_certificate((vault / f"{NAME}.crt").read_bytes())
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=12 - days_left)
    wl = make_whitelist(NAME, cert, Algorithm.SHA1, 12, created)
    (root / "public" / ".cvmfswhitelist").write_bytes(wl.sign(master))


def test_bad_whitelists_are_refused(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = Layout(root, NAME)
    master = keys.load_private_key(layout.key("masterkey").read_bytes())
    cert = keys.load_certificate(layout.key("crt").read_bytes())
    stranger = keys.generate_key()
    now = dt.datetime.now(dt.UTC)
    before = (root / "public" / ".cvmfswhitelist").read_bytes()
    cases = {
        "stranger": (make_whitelist(NAME, cert, Algorithm.SHA1, 12, now).sign(stranger), "signature"),
        "expired": (
            make_whitelist(NAME, cert, Algorithm.SHA1, 1, now - dt.timedelta(days=3)).sign(master),
            "expired",
        ),
        "other name": (
            make_whitelist("other.example.org", cert, Algorithm.SHA1, 12, now).sign(master),
            "other.example.org",
        ),
        "other certificate": (
            make_whitelist(NAME, keys.make_certificate(NAME, stranger), Algorithm.SHA1, 12, now).sign(master),
            "does not list",
        ),
        "older than installed": (
            make_whitelist(NAME, cert, Algorithm.SHA1, 12, now - dt.timedelta(hours=2)).sign(master),
            "before the installed one",
        ),
        "garbage": (b"not a whitelist\n", "whitelist"),
    }
    for label, (data, reason) in cases.items():
        f = tmp_path / "wl"
        f.write_bytes(data)
        code, _, err = run(capsys, "repo", "install-whitelist", NAME, "--root", str(root), str(f))
        assert code == 3 and reason in err, (label, err)
        assert (root / "public" / ".cvmfswhitelist").read_bytes() == before, label
    # a master key that is not the one clients trust is refused by resign too
    layout.key("masterkey").write_bytes(keys.private_key_pem(stranger))
    code, _, err = run(capsys, "repo", "resign", NAME, "--root", str(root))
    assert code == 2 and "does not match the master public key" in err
    assert (root / "public" / ".cvmfswhitelist").read_bytes() == before


def test_resign_never_dates_back(root: Path) -> None:
    s0 = Stratum0(root, NAME)
    first = s0.resign()
    back = s0.resign(now=first.created.timestamp() - 7 * 86400)  # the clock stepped back a week
    assert back.created == first.created and back.expires == first.expires
