"""Re-score published entries from the checkpoints committed beside them (nothing trains).

    OMP_NUM_THREADS=1 python leaderboard/runs/rescore.py leaderboard/results/digits/convnet/grad_x_input/quick

For every entry ``<defense>-s<seed>.json`` in the folder with its checkpoint and sidecar beside
it (``<defense>-s<seed>.pt``, ``.sidecar``), the checkpoint is put into the cache where
``xrbench evaluate`` looks for it (the key of the entry's recipe: the reference recipe, or the
fields ``defense.recipe_diff`` lists), then the same evaluate runs with ``--replace``: stages
already cached are reused, stages new to this xrbench (the worst-case ensemble of protocol
section 5.8) or whose code version changed are computed, and the entry is rewritten in place.
The script stops if the rescored entry names another checkpoint than the committed one.
``--defenses`` limits it to some defenses. Ends with each defense's stage times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def overrides_of(entry: dict[str, Any]) -> dict[str, str]:
    """The ``--set`` overrides that give the entry's recipe: its ``recipe_diff`` fields."""
    diff = entry["defense"].get("recipe_diff") or {}
    return {k: str(v["value"]) for k, v in diff.items()}


def restore(entry: dict[str, Any], pt: Path, cache: Path | None) -> None:
    """Copy the committed checkpoint and sidecar to the cache path of the entry's recipe."""
    from xrbench.checkpoints import sidecar_path
    from xrbench.data import dataset_card
    from xrbench.train import checkpoint_key

    committed_side = pt.with_suffix(".sidecar")  # beside an entry: .json is the entry's
    side = json.loads(committed_side.read_text())
    key, _ = checkpoint_key(dataset_card(entry["dataset"]["name"]), entry["model"]["name"],
                            entry["defense"]["name"], overrides_of(entry), int(entry["seed"]),
                            float(entry["model"]["beta"]))
    if side.get("key") != key.digest():
        raise SystemExit(f"{pt}: its sidecar's key {side.get('key')} is not the entry's recipe")
    if side.get("sha256") != entry["checkpoint"]["sha256"]:
        raise SystemExit(f"{pt}: the sidecar's sha256 is not the one the entry scored")
    dest = key.path(cache)
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pt, dest)
        shutil.copyfile(committed_side, sidecar_path(dest))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder of published entries with checkpoints")
    ap.add_argument("--defenses", default=None, help="comma-separated (default: every entry)")
    ap.add_argument("--cache", type=Path, default=None, help="xrbench cache (default: "
                                                             "$XRBENCH_CACHE)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from xrbench import api

    want = None if args.defenses is None else set(args.defenses.split(","))
    # the results root is four levels up: <root>/<dataset>/<model>/<explainer>/<profile>/
    root = args.folder.resolve().parents[3]
    rows = []
    for path in sorted(args.folder.glob("*-s*.json")):
        entry = json.loads(path.read_text())
        defense = entry["defense"]["name"]
        pt = path.with_name(path.name[:-len(".json")] + ".pt")
        if ((want is not None and defense not in want) or not pt.is_file()
                or not pt.with_suffix(".sidecar").is_file()):
            continue
        restore(entry, pt, args.cache)
        t0 = time.perf_counter()
        res = api.evaluate(defense, entry["dataset"]["name"], entry["model"]["name"],
                           entry["explainer"]["name"], entry["protocol"]["profile"],
                           seed=int(entry["seed"]), overrides=overrides_of(entry) or None,
                           out=root, device=args.device, progress=False,
                           cache_root=args.cache, replace=True)
        if res.entry["checkpoint"]["sha256"] != entry["checkpoint"]["sha256"]:
            raise SystemExit(f"{defense}: scored {res.entry['checkpoint']['sha256'][:12]}, not "
                             f"the committed {entry['checkpoint']['sha256'][:12]}")
        rows.append((defense, round(time.perf_counter() - t0, 1), res.seconds))
        print(f"{defense}: {res.path} ({rows[-1][1]} s; " + ", ".join(
            f"{k} {v:.1f}s" + (" cached" if k in res.reused_stages else "")
            for k, v in res.seconds.items()) + ")", flush=True)
    if not rows:
        print(f"no entry with a checkpoint beside it in {args.folder}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
