"""The ``xrbench`` command line. It parses, calls :mod:`xrbench.api`, and prints.

Every error a user can cause becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Sequence

from .errors import XRBenchError

EXIT_USAGE = 2

MAIN_HELP = """\
xrbench trains any registered defense with its reference recipe, scores it with one fixed
protocol (explanation manipulation, RPS, insertion, RelEx retrieval, PGD accuracy), and
writes standardized JSON entries and markdown leaderboards.

The main job:  xrbench evaluate --defense sep_neg --dataset digits
"""


def _parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise XRBenchError(f"--set expects KEY=VALUE (e.g. --set lambda_=-1000), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _add_common(p: argparse.ArgumentParser, *, defense_default: str | None = "normal") -> None:
    p.add_argument("--dataset", default="digits",
                   help="dataset name (default: digits, embedded and offline); see `xrbench list "
                        "datasets`")
    p.add_argument("--model", default="convnet", help="model name (default: convnet)")
    p.add_argument("--defense", default=defense_default,
                   help=f"defense name (default: {defense_default}); see `xrbench list defenses`")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and "
                                                       "the defense's randomness (default: 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the recipe's epochs (the recipe hash changes accordingly)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set lambda_=-1000 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", default=None,
                   help="where datasets live (default: $XRBENCH_DATA or ~/.cache/xrbench/data)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even when a cached checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrbench", description=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered datasets, models, explainers or defenses",
                       description="List the registered components of one kind, with a "
                                   "one-line description each (plugins included).")
    p.add_argument("kind", choices=["datasets", "models", "explainers", "defenses"])

    p = sub.add_parser("train", help="train (or fetch from the cache) one defense's checkpoint",
                       description="Train a model with a defense's reference recipe. The "
                                   "checkpoint is cached by (dataset, model, defense, recipe, "
                                   "seed); an identical second run reuses it.")
    _add_common(p)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    from . import registry

    reg = getattr(registry, args.kind)
    rows = [(e.display_name, e.description + ("" if e.source == "xrbench" else f" [{e.source}]"))
            for e in reg.entries()]
    width = max(len(r[0]) for r in rows) if rows else 0
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import api

    overrides = _parse_sets(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    t0 = time.perf_counter()
    trained = api.train(dataset=args.dataset, model=args.model, defense=args.defense,
                        seed=args.seed, overrides=overrides, device=args.device,
                        data_dir=args.data_dir, retrain=args.retrain, progress=not args.quiet)
    meta = trained.meta
    state = "reused cached checkpoint" if trained.reused else "trained"
    print(f"{state}: {trained.path}")
    print(f"  dataset {meta['dataset']}  model {meta['model']['name']}  defense "
          f"{meta['defense']}  seed {meta['seed']}  recipe {meta['recipe_hash']}")
    print(f"  test accuracy {meta['test_acc']:.2f}%  sha256 {trained.sha256[:16]}...  "
          f"wall {time.perf_counter() - t0:.1f} s")
    return 0


COMMANDS = {"list": _cmd_list, "train": _cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrbench`` console script; returns the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        if args.version:
            from . import __version__

            print(f"xrbench {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        return int(COMMANDS[args.command](args) or 0)
    except XRBenchError as exc:
        print(f"xrbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xrbench: interrupted; finished stages are cached, run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
