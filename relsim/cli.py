"""The ``relsim`` command. Each command group lives in a module of :mod:`relsim.commands` with a
``register(subparsers)``; they share one error and exit-code convention (``relsim.commands._common``).

Example:
    $ relsim score a.jpg b.jpg
    $ relsim --help
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from . import __version__

#: Modules that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "relsim.commands.score",  # score
    "relsim.commands.caption",  # caption
    "relsim.commands.collection",  # embed, search, info, index, export, migrate, prune, repair
    "relsim.commands.hub",  # download, convert, push-to-hub
    "relsim.commands.train",  # train, data
    "relsim.commands.eval",  # eval retrieval
    "relsim.commands.serve",  # serve
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (docs/cli.md): ``relsim search: error: argument -k: ...``, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relsim", description="Relational visual similarity.")
    parser.add_argument("--version", action="version", version=f"relsim {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as ``relsim: warning: ...`` lines, without Python's file:line noise."""
    print(f"relsim: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


__all__ = ["COMMAND_MODULES", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
