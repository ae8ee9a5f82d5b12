"""The ``scoresde`` command line: ``scoresde <command> [options]`` (also ``python -m scoresde``).

Each command lives in ``scoresde/commands/<name>.py`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module under scoresde.commands (kept in the order shown by --help)
COMMANDS = ("demo", "train", "sample", "likelihood", "bench", "schedule")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (``scoresde <command>: error: ...``, exit 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scoresde",
        description="Score-based generative modelling in the SDE view: train, sample, compare samplers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"scoresde.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, OSError) as err:  # OSError: a missing file, a full disk, no permission
        print(f"scoresde {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
