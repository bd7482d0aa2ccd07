"""``xrbench train``: train (or fetch from the cache) one defense's checkpoint."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import Handler, add_common_options, parse_sets, progress_bars


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``train`` subparser to ``sub``; return ``{"train": handler}``."""
    p = sub.add_parser("train", help="train (or fetch from the cache) one defense's checkpoint",
                       description="Train a model with a defense's reference recipe. The "
                                   "checkpoint is cached by (dataset, model, defense, recipe, "
                                   "seed); an identical second run reuses it.")
    add_common_options(p)
    return {"train": _cmd_train}


def _cmd_train(args: argparse.Namespace) -> int:
    from .. import api

    overrides = parse_sets(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    t0 = time.perf_counter()
    trained = api.train(dataset=args.dataset, model=args.model, defense=args.defense,
                        seed=args.seed, overrides=overrides, device=args.device,
                        data_dir=args.data_dir, retrain=args.retrain, progress=progress_bars(args))
    meta = trained.meta
    state = "reused cached checkpoint" if trained.reused else "trained"
    print(f"{state}: {trained.path}")
    print(f"  dataset {meta['dataset']}  model {meta['model']['name']}  defense "
          f"{meta['defense']}  seed {meta['seed']}  recipe {meta['recipe_hash']}")
    print(f"  test accuracy {meta['test_acc']:.2f}%  sha256 {trained.sha256[:16]}...  "
          f"wall {time.perf_counter() - t0:.1f} s")
    return 0
