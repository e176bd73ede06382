"""The ``rcds`` command's parser: which command modules it imports."""

from __future__ import annotations

import subprocess
import sys


def test_version_imports_no_command() -> None:
    """``rcds --version`` prints the version without importing any command's module."""
    code = (
        "import sys\n"
        "from rcds.cli.main import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "bad = [m for m in sys.modules if m.startswith(('rcds.cli.', 'rcds.service', 'numpy'))]\n"
        "assert bad == ['rcds.cli.main'], bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    from rcds import __version__

    assert out.stdout.strip() == f"rcds {__version__}"


def test_every_command_group_is_listed() -> None:
    from rcds.cli import main

    for module, commands in main.COMMAND_GROUPS.items():
        for command in commands:
            assert main._groups_for([command, "--x"]) == [module]
    assert main._groups_for(["--help"]) == list(main.COMMAND_GROUPS)
    assert main._groups_for(["--version", "--help"]) == list(main.COMMAND_GROUPS)
    assert main._groups_for(["--version"]) == []
    parser = main.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {c for cs in main.COMMAND_GROUPS.values() for c in cs}  # type: ignore[attr-defined]
