"""The ``xrbench`` command line. It parses, calls :mod:`xrbench.api`, and prints.

One module per command (``list_``, ``recipe``, ``train``, ``evaluate``, ``calibrate``,
``subset``, ``compare``, ``leaderboard``, ``plot``, ``regress``, ``sweep``), each with
``add_commands(sub)`` adding its subparser; :mod:`~xrbench.cli.app` builds the parser and
dispatches (:func:`main`, the console script), :mod:`~xrbench.cli.common` holds what the
commands share. Every error a user can cause becomes one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

from .app import COMMAND_MODULES, MAIN_HELP, build_parser, main
from .common import EXIT_USAGE, add_executor_options
from .evaluate import FLAG_NOTES, summary_table

__all__ = ["COMMAND_MODULES", "EXIT_USAGE", "FLAG_NOTES", "MAIN_HELP", "add_executor_options",
           "build_parser", "main", "summary_table"]
