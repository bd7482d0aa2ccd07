"""Wall time of one training epoch per defense, relative to `normal`, measured side by side
in one process (digits, convnet, reference recipes, batch 64, one thread).

    python benchmarks/train_time_ratios.py --epochs 1

SEP's regulariser is off during its warm-up, so its post-warm-up cost is measured too
(`--set reg_warmup_fraction=0 reg_ramp_fraction=0`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import xrbench  # noqa: F401
from xrbench.data import load_dataset
from xrbench.train import get_trained_model

DEFENSES = ["normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian"]
SEP_ON = {"reg_warmup_fraction": "0", "reg_ramp_fraction": "0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    runs = [(d, {}) for d in DEFENSES] + [("sep_pos", SEP_ON), ("sep_neg", SEP_ON)]
    seconds: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs:
            trained = get_trained_model(ds, "convnet", name,
                                        overrides={"epochs": str(args.epochs), **extra},
                                        progress=False, cache_root=Path(tmp))
            label = name + (" (regulariser on)" if extra else "")
            # the loop's own per-epoch time (no test-set evaluation, no checkpoint writing)
            per_epoch = sum(h["seconds"] for h in trained.history) / len(trained.history)
            seconds.append((label, per_epoch))
    base = seconds[0][1]
    print("| defense | s / epoch | x normal |\n|---|---|---|")
    for label, s in seconds:
        print(f"| {label} | {s:.2f} | {s / base:.1f} |")


if __name__ == "__main__":
    main()
