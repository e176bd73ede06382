"""The ``rcds`` command: argument parsing and error reporting; the work happens in the layers below."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rcds import __version__
from rcds.cli import client, demo, jobs, repo, server
from rcds.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    LockedError,
    NetworkError,
    NotFoundError,
    RcdsError,
    StorageError,
)

EXIT_CODES: tuple[tuple[type[RcdsError], int], ...] = (
    (InputError, 2),
    (ConfigError, 2),
    (IntegrityError, 3),
    (LockedError, 4),
    (NotFoundError, 5),
    (NetworkError, 6),
    (StorageError, 7),
)
"""Exit status by error class (anything else from rcds: 1). Documented in docs/cli.md."""

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
COMMAND_GROUPS: tuple[Registrar, ...] = (
    repo.register,
    server.register,
    client.register,
    jobs.register,
    demo.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="rcds", description="Rapid Code Distribution Service")
    parser.add_argument("--version", action="version", version=f"rcds {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def exit_code(exc: RcdsError) -> int:
    """The exit status for an rcds error."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="rcds: %(levelname)s: %(message)s"
    )
    try:
        result = args.func(args)
    except RcdsError as exc:
        print(f"rcds: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("rcds: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
