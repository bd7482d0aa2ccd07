"""Channels-last against the default layout (issue 22 item 2), one thread, interleaved rounds:
a ``normal`` and a ``mat`` training step (ConvNet, Fashion-MNIST shapes, batch 64), and the
manipulation (64 pairs, 10 steps, grad x input) with the largest relative move of a pair's
Expl@end between the two layouts.

    python benchmarks/memory_format.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import train_step  # noqa: E402
from xrbench.attacks.manipulation import manipulate  # noqa: E402
from xrbench.data import dataset_card  # noqa: E402
from xrbench.explainers import get_explainer  # noqa: E402
from xrbench.models import create_model  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    steps = {d: train_step.training_step(d, "fashion_mnist", "convnet", batch=64)
             for d in ("normal", "mat")}
    default_create = train_step.create_model
    train_step.create_model = lambda *a, **k: default_create(*a, **k).to(
        memory_format=torch.channels_last)
    steps.update({f"{d} channels-last": train_step.training_step(d, "fashion_mnist", "convnet",
                                                                   batch=64)
                  for d in ("normal", "mat")})
    train_step.create_model = default_create
    best = train_step.interleaved_seconds(steps, 4)
    for k, v in best.items():
        print(f"training step {k}: {1000 * v:.0f} ms")

    card = dataset_card("fashion_mnist")
    torch.manual_seed(0)
    model = create_model("convnet", card).eval()
    cl = create_model("convnet", card).eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    xv, xt = (torch.rand(64, 1, 28, 28, generator=g) for _ in range(2))
    explain = get_explainer("grad_x_input")
    runs = {"default": lambda: manipulate(model, explain, xv, xt, iterations=10, lr=7.5e-4),
            "channels-last": lambda: manipulate(cl, explain, xv, xt, iterations=10, lr=7.5e-4)}
    out = {k: f() for k, f in runs.items()}
    best = train_step.interleaved_seconds(runs, 3)
    a, b = out["default"].expl_end, out["channels-last"].expl_end
    for k, v in best.items():
        print(f"manipulation {k}: {v:.2f} s")
    print(f"largest relative move of a pair's Expl@end: {float(((a - b).abs() / a.abs()).max()):.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
