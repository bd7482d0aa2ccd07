"""``xrbench list KIND``: the registered components of one kind, one line each."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Handler


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``list`` subparser to ``sub``; return ``{"list": handler}``."""
    p = sub.add_parser("list", help="list registered datasets, models, explainers, defenses "
                                    "or attacks",
                       description="List the registered components of one kind, with a "
                                   "one-line description each (plugins included).")
    p.add_argument("kind", choices=["datasets", "models", "explainers", "defenses", "attacks"])
    p.add_argument("--load", action="store_true",
                   help="import every component and plugin to list them (slower; reports a "
                        "plugin that fails to load or clashes with another name)")
    return {"list": _cmd_list}


def _cmd_list(args: argparse.Namespace) -> int:
    if args.load:
        from .. import registry

        rows = [(e.display_name,
                 e.description + ("" if e.source == "xrbench" else f" [{e.source}]"))
                for e in getattr(registry, args.kind).entries()]
    else:
        from ..catalogue import listing

        rows = listing(args.kind)
    width = max(len(r[0]) for r in rows) if rows else 0
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0
