"""A/B runs: a bench child with one ``rcds`` source tree or another first on the path.

Shared by the benches that compare this checkout's ``src`` with another's (e.g. main's) in the
same minutes, the two alternating so that both see the same load (``ingest_ab.py``,
``ingest_tree_ab.py``, ``service_ab.py``), and by those that run a child with a given ``src``
(``ingest_catalog_check.py``, ``ingest_timeline.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"
"""This checkout's source tree (the directory holding ``rcds/``)."""


def child_env(src: Path) -> dict[str, str]:
    """The environment of a bench child: this one with ``src`` then the bench directory first on
    the path (the child and the processes it starts inherit it)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(HERE)]))


def child_command(code: str, *args: str) -> list[str]:
    """``python -c code args`` with this interpreter (run it in ``HERE`` with :func:`child_env`)."""
    return [sys.executable, "-c", code, *args]


def run_child(src: Path, code: str, *args: str) -> str:
    """Run ``python -c code args`` with ``src`` then the bench directory first on the path, in the
    bench directory; its standard output."""
    return subprocess.run(
        child_command(code, *args), env=child_env(src), cwd=HERE, check=True, capture_output=True, text=True
    ).stdout


def sources(base_src: Path) -> tuple[tuple[str, Path], ...]:
    """``("base", base_src)`` then ``("new", this checkout's src)``: the order of each round."""
    return (("base", base_src.resolve()), ("new", NEW_SRC))


def rounds(count: int, base_src: Path) -> Iterator[tuple[int, str, Path]]:
    """(round, name, src) for ``count`` rounds, base and new alternating."""
    for rnd in range(1, count + 1):
        for name, src in sources(base_src):
            yield rnd, name, src


def ab_arguments(ap: argparse.ArgumentParser, rounds_default: int) -> None:
    """The options every A/B bench takes: ``--base-src``, ``--tar``, ``--rounds``."""
    ap.add_argument("--base-src", type=Path, required=True, help="the baseline's src directory")
    ap.add_argument("--tar", type=Path, required=True, help="an uncompressed input tarball")
    ap.add_argument("--rounds", type=int, default=rounds_default)
