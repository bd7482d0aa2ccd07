"""One training step of a defense, as ``xrbench.train.fit`` takes it, on a fixed random batch:
shared by ``test_bench_train_step.py`` and ``train_time_ratios.py --per-step``.

A step is the defense's loss, the parameter-only backward of the trainer and one Adam step.
SEP runs with its regulariser on (no warm-up), so its row is its cost after the warm-up.
``fast=True`` runs the step with ``XRBENCH_FAST_DOUBLE_BACKWARD=1`` (:mod:`xrbench.fastgrad`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

import torch

import xrbench  # noqa: F401
from xrbench import fastgrad
from xrbench.data import dataset_card
from xrbench.defenses.base import TrainState
from xrbench.models import create_model
from xrbench.pooling import use_channels_last_pooling
from xrbench.registry import defenses
from xrbench.train import backward_to_parameters, build_recipe
from xrbench.utils import generator

DEFENSES = ("normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian")
#: the defenses whose step differentiates an input gradient (xrbench.fastgrad applies)
DOUBLE_BACKWARD = ("sep_pos", "sep_neg", "l2_cosd", "hessian")
#: per-step cost targets, x normal: Joo et al. 2023, Table 2 (LeNet, CIFAR-10)
TARGETS = {"l2_cosd": 2.75, "hessian": 4.25}
SEP_ON = {"reg_warmup_fraction": "0", "reg_ramp_fraction": "0"}


@contextlib.contextmanager
def fast_env(on: bool) -> Iterator[None]:
    """``XRBENCH_FAST_DOUBLE_BACKWARD`` set to 1 (on) or 0 for the block, then restored."""
    before = os.environ.get(fastgrad.ENV_VAR)
    os.environ[fastgrad.ENV_VAR] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[fastgrad.ENV_VAR]
        else:
            os.environ[fastgrad.ENV_VAR] = before


def training_step(defense_name: str, dataset: str = "cifar10", model_name: str = "lenet",
                  batch: int = 64, fast: bool = False, seed: int = 0,
                  channels_last_pooling: bool = True) -> Callable[[], float]:
    """A callable that runs one training step (model in training mode, reference recipe,
    a fixed uniform-random batch shaped like ``dataset``'s images) and returns the loss.
    Only the dataset's card is read, never its images. ``channels_last_pooling=False``
    puts back PyTorch's own max pooling (:mod:`xrbench.pooling`; same bits, slower)."""
    card = dataset_card(dataset)
    torch.manual_seed(seed)
    model = create_model(model_name, card).train()
    if not channels_last_pooling:
        use_channels_last_pooling(model, enabled=False)
    recipe = build_recipe(defense_name, card, model_name,
                          SEP_ON if defense_name.startswith("sep") else {})
    state = TrainState(card, model_name, generator(seed + 1), torch.device("cpu"))
    state.epoch = float(recipe.epochs) / 2
    defense = defenses.get(defense_name)(recipe, state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(batch, card.channels, card.size, card.size, generator=g)
    y = torch.randint(0, card.num_classes, (batch,), generator=g)

    def step() -> float:
        with fast_env(fast):
            loss = defense.loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            backward_to_parameters(loss, params)
            opt.step()
        return float(loss.detach())

    return step


def interleaved_seconds(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Fastest of ``rounds`` timed calls of each step, the steps taken in turn in every round
    (so a busy spell on a shared machine hits all of them); one warm-up call each first."""
    for step in steps.values():
        step()
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def ratio_table(seconds: dict[str, float], targets: dict[str, float] | None = None,
                base: str = "normal") -> str:
    """Markdown rows: label | ms / step | x normal | target (``targets`` by defense name,
    e.g. :data:`TARGETS` for LeNet; a label is a defense name, optionally followed by a
    space and a note)."""
    lines = ["| defense | ms / step | x normal | target |", "|---|---|---|---|"]
    for label, s in seconds.items():
        target = (targets or {}).get(label.split(" ")[0])
        verdict = "" if target is None else (
            f"<= {target} ({'met' if s / seconds[base] <= target else 'missed'})")
        lines.append(f"| {label} | {1000 * s:.1f} | {s / seconds[base]:.2f} | {verdict} |")
    return "\n".join(lines)
