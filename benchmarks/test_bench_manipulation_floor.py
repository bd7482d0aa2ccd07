"""Benchmark: the manipulation stage (PROTOCOL 5.2) as ``xrbench evaluate`` runs it, against
the floor, a bare attack loop on the same pairs with the same iterations, side by side in
one run (pytest-benchmark):

    python -m pytest benchmarks/test_bench_manipulation_floor.py -q

Digits ConvNet, grad x input, one thread, the quick profile's learning rate.

* stage: :class:`xrbench.stages.Manipulation` ``run`` on a subset of N images (all N(N-1)
  ordered pairs; full 33 images, 1,056 pairs; short 8, 56; 20 Adam steps), i.e.
  :func:`~xrbench.attacks.manipulation.manipulate_pairs` in chunks of ``pair_batch`` 512
  with the protocol's objective, the start and end maps on the original model, the loss
  traces and each chunk written to a stage cache (a temporary one, recomputed every round).
* bare: the least the same attack needs, in the same chunks: the frozen attack copy
  (:func:`~xrbench.inference.frozen_inference_copy`, built once), the target maps and victim
  probabilities, then per step the grad x input map with ``create_graph``, L_e plus the
  output term, one ``autograd.grad``, an Adam step and the [0, 1] clamp; nothing else.

Ratio stage / bare, target <= 1.25x. The bare loop's result is checked to be the stage's
attack (its L_e at the end equals the stage's ``expl_end``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import xrbench  # noqa: F401
from xrbench.attacks.manipulation import ordered_pairs
from xrbench.data import load_dataset
from xrbench.explainers import expl_loss, get_explainer, sum_map
from xrbench.inference import frozen_inference_copy
from xrbench.models import create_model
from xrbench.protocol import get_profile, with_overrides
from xrbench.engine.runtime import RunContext, StageCache
from xrbench.stages import Manipulation

from benchutil import pick

N_IMAGES = pick(33, 8)  # 1,056 / 56 ordered pairs
ITERATIONS = 20
ROUNDS = pick(5, 3)
_results: dict[str, torch.Tensor] = {}


@pytest.fixture(scope="module")
def ctx():
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    images, labels = ds.test.get_batch(torch.arange(N_IMAGES))
    profile = with_overrides(get_profile("quick"), manipulation_iterations=ITERATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        # force: the cache never answers, so every round computes (and writes) every chunk
        yield RunContext(model=model, model_name="convnet",
                         explainer=get_explainer("grad_x_input"), dataset=ds,
                         profile=profile, images=images, labels=labels,
                         device=torch.device("cpu"), seed=0, progress=False, base_key={},
                         cache=StageCache(Path(tmp), force=True))


def bare_attack(ctx: RunContext) -> torch.Tensor:
    """The floor: the same attack on the same pairs, nothing but the loop. Returns x_adv
    (P, C, H, W)."""
    model, ex, images = ctx.model, ctx.explainer, ctx.images
    lr, size = ctx.profile.lr_for(ctx.card), ctx.profile.pair_batch
    pairs = ordered_pairs(len(images))
    attack_model = frozen_inference_copy(model)
    out = []
    for start in range(0, len(pairs), size):
        idx = pairs[start:start + size]
        x_v, x_t = images[idx[:, 0]], images[idx[:, 1]]
        with torch.no_grad():
            p_v = F.softmax(model(x_v), dim=1)
            cls, cls_t = p_v.argmax(dim=1), model(x_t).argmax(dim=1)
        target_map = sum_map(ex(model, x_t, cls_t))
        x = x_v.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(ITERATIONS):
            a, logits = ex.attribute_and_logits(attack_model, x, cls, create_graph=True)
            loss = (1e11 * expl_loss(sum_map(a), target_map)
                    + 1e6 * ((F.softmax(logits, dim=1) - p_v) ** 2).mean(dim=1))
            (x.grad,) = torch.autograd.grad(loss.sum(), x)
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        out.append(x.detach())
    return torch.cat(out)


def test_manipulation_stage(benchmark, ctx, ratios):
    out = benchmark.pedantic(Manipulation().run, args=(ctx,), rounds=ROUNDS, warmup_rounds=1)
    ratios.record("manipulation stage", benchmark)
    assert out["expl_end"].shape == (N_IMAGES * (N_IMAGES - 1),)
    _results["expl_end"] = out["expl_end"]


def test_bare_attack_loop(benchmark, ctx, ratios):
    x_adv = benchmark.pedantic(bare_attack, args=(ctx,), rounds=ROUNDS, warmup_rounds=1)
    ratios.record("bare attack loop", benchmark)
    ratios.ratio("manipulation stage vs bare attack loop (floor)", "manipulation stage",
                 "bare attack loop", at_most=1.25,
                 note=f"{N_IMAGES * (N_IMAGES - 1)} pairs, {ITERATIONS} Adam steps")
    # the floor runs the stage's attack: its L_e at the end (original model) is expl_end
    expected = _results.get("expl_end")
    if expected is None:
        expected = Manipulation().run(ctx)["expl_end"]
    pairs = ordered_pairs(N_IMAGES)
    ex, model, images = ctx.explainer, ctx.model, ctx.images
    with torch.no_grad():
        cls, cls_t = model(images[pairs[:, 0]]).argmax(1), model(images[pairs[:, 1]]).argmax(1)
    end = expl_loss(sum_map(ex(model, x_adv, cls)), sum_map(ex(model, images[pairs[:, 1]], cls_t)))
    torch.testing.assert_close(end, expected, rtol=1e-3, atol=0)
