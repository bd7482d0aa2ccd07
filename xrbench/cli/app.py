"""The ``xrbench`` parser and entry point: :func:`build_parser` asks every command module
(:data:`COMMAND_MODULES`) to add its subparser, :func:`main` dispatches to its handler.

Every error a user can cause becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..errors import XRBenchError
from .common import EXIT_USAGE, Handler, Parser

MAIN_HELP = """\
xrbench trains any registered defense with its reference recipe, scores it with one fixed
protocol (explanation manipulation, RPS, insertion, RelEx retrieval, PGD accuracy), and
writes standardized JSON entries and markdown leaderboards.

The main job:  xrbench evaluate --defense sep_neg --dataset digits
"""

#: one module per command, in the order ``--help`` lists them; each has ``add_commands(sub)``,
#: which adds its subparser and returns ``{command: handler}``
COMMAND_MODULES = tuple(f"xrbench.cli.{name}" for name in (
    "list_", "recipe", "train", "evaluate", "calibrate", "subset", "compare", "leaderboard",
    "plot", "regress", "sweep", "verify"))


def build_parser(handlers: dict[str, Handler] | None = None) -> argparse.ArgumentParser:
    """The ``xrbench`` parser; every command's handler is added to ``handlers``."""
    handlers = {} if handlers is None else handlers

    parser = Parser(
        prog="xrbench", description=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        handlers.update(importlib.import_module(module).add_commands(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrbench`` console script; returns the exit code."""
    try:
        handlers: dict[str, Handler] = {}
        parser = build_parser(handlers)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        if not getattr(args, "quiet", True):  # the subset extractor's step, bar or not
            logging.getLogger("xrbench.subset").setLevel(logging.INFO)
        if not getattr(args, "quiet", True) and not sys.stderr.isatty():
            for name in ("xrbench.api", "xrbench.train"):  # a line per stage and per epoch
                logging.getLogger(name).setLevel(logging.INFO)
        if args.version:
            from .. import __version__

            print(f"xrbench {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        return int(handlers[args.command](args) or 0)
    except XRBenchError as exc:
        print(f"xrbench: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xrbench: interrupted; finished stages are cached, run the same command again "
              "to resume", file=sys.stderr)
        return 130
