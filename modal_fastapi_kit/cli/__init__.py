"""``modal-fastapi-kit`` (alias ``mfk``): serve, check, deploy and front a ModelServer.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
``main`` wires them up. Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from ..exceptions import KitError
from . import _check, _deploy, _edge, _serve

__all__ = ["main"]

COMMANDS: tuple[ModuleType, ...] = (_serve, _check, _deploy, _edge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfk",
        description="Serve a ModelServer locally, check or deploy it on Modal, front it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KitError as exc:  # UsageError (the command line), ConfigError (the service file)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
