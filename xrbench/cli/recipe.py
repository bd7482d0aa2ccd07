"""``xrbench recipe DEFENSE``: every field of a defense's recipe, its value, default and note."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Handler, parse_sets


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``recipe`` subparser to ``sub``; return ``{"recipe": handler}``."""
    p = sub.add_parser("recipe", help="show a defense's recipe: every field, its value, unit "
                                      "and source",
                       description="Print the recipe a defense trains with on a dataset and "
                                   "model: each field with the value it resolves to, its "
                                   "default, and the note beside it in the code (unit, rule, "
                                   "source). Change a field with --set KEY=VALUE on train or "
                                   "evaluate.")
    p.add_argument("defense", help="defense name (see `xrbench list defenses`)")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--model", default="convnet", help="model (default: convnet)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="show the recipe with this override (repeatable)")
    p.add_argument("--data-dir", default=None, help="where datasets live")
    return {"recipe": _cmd_recipe}


def _cmd_recipe(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .. import api

    rows = api.recipe(args.defense, args.dataset, args.model, overrides=parse_sets(args.sets),
                      data_dir=args.data_dir)
    print(f"{args.defense} on {args.dataset} / {args.model}:")
    print(tabulate([(r["field"], r["value"],
                     "(by dataset/model)" if r["default"] is None else r["default"], r["note"])
                    for r in rows],
                   headers=["field", "value", "default", "note"], tablefmt="simple",
                   disable_numparse=True))
    return 0
