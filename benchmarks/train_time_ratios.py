"""Training cost per defense relative to `normal`, measured side by side in one process
(one thread).

Per epoch (digits, convnet, reference recipes, batch 64; the loop's own time):

    python benchmarks/train_time_ratios.py --epochs 1

SEP's regulariser is off during its warm-up, so its post-warm-up cost is measured too
(`--set reg_warmup_fraction=0 reg_ramp_fraction=0`). A digits epoch is 20 small steps, so
per-epoch ratios carry fixed overhead; per step (one step of each defense in turn, fastest
of `--rounds`, LeNet on a random CIFAR-sized batch and the digits ConvNet, default path and
`XRBENCH_FAST_DOUBLE_BACKWARD=1`):

    python benchmarks/train_time_ratios.py --per-step --rounds 10
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import xrbench  # noqa: F401
from xrbench.data import load_dataset
from xrbench.train import get_trained_model

from train_step import (DEFENSES, DOUBLE_BACKWARD, SEP_ON, TARGETS, interleaved_seconds,
                        ratio_table, training_step)

#: (dataset, model) pairs of the per-step table: Joo et al.'s LeNet at CIFAR size (their
#: Table 2's targets apply to it), and the digits ConvNet of the per-epoch table
PER_STEP_MODELS = (("cifar10", "lenet"), ("digits", "convnet"))


def per_epoch(epochs: int) -> str:
    ds = load_dataset("digits")
    runs = [(d, {}) for d in DEFENSES] + [("sep_pos", SEP_ON), ("sep_neg", SEP_ON)]
    seconds: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs:
            trained = get_trained_model(ds, "convnet", name,
                                        overrides={"epochs": str(epochs), **extra},
                                        progress=False, cache_root=Path(tmp))
            label = name + (" (regulariser on)" if extra else "")
            # the loop's own per-epoch time (no test-set evaluation, no checkpoint writing)
            per = sum(h["seconds"] for h in trained.history) / len(trained.history)
            seconds.append((label, per))
    base = seconds[0][1]
    lines = ["| defense | s / epoch | x normal |", "|---|---|---|"]
    lines += [f"| {label} | {s:.2f} | {s / base:.1f} |" for label, s in seconds]
    return "\n".join(lines)


def per_step(rounds: int, batch: int) -> str:
    out = []
    for dataset, model_name in PER_STEP_MODELS:
        steps = {d: training_step(d, dataset, model_name, batch=batch) for d in DEFENSES}
        steps.update({f"{d} (fast)": training_step(d, dataset, model_name, batch=batch,
                                                   fast=True) for d in DOUBLE_BACKWARD})
        seconds = interleaved_seconds(steps, rounds)
        order = [k for d in DEFENSES for k in (d, f"{d} (fast)") if k in seconds]
        out.append(f"{model_name} on {dataset}-sized random batches of {batch}, fastest of "
                   f"{rounds} rounds (SEP with its regulariser on):\n\n"
                   + ratio_table({k: seconds[k] for k in order},
                                 TARGETS if model_name == "lenet" else None))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs per defense (per-epoch table)")
    ap.add_argument("--per-step", action="store_true",
                    help="time single training steps instead of epochs")
    ap.add_argument("--rounds", type=int, default=10,
                    help="timed steps per defense (per-step table); the fastest counts")
    ap.add_argument("--batch", type=int, default=64, help="images per step (per-step table)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(per_step(args.rounds, args.batch) if args.per_step else per_epoch(args.epochs))


if __name__ == "__main__":
    main()
