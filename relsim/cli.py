"""The ``relsim`` command. Each subcommand lives in its own module with a ``register(subparsers)``.

Example:
    $ relsim score a.jpg b.jpg
    $ relsim --help
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: Modules that add subcommands; each defines ``register(subparsers)`` and sets ``func`` on its parser.
COMMAND_MODULES = [
    "relsim.commands.inference",  # score, embed, search, info, download
    "relsim.train.cli",  # train, data, convert, push-to-hub
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relsim", description="Relational visual similarity.")
    parser.add_argument("--version", action="version", version=f"relsim {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("relsim"):
                continue  # a command group not written yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
