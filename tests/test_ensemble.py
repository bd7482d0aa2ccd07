"""The worst-case ensemble (PROTOCOL 5.8): known answers for its reduction, its attacks on
models built so that the paper's Adam attack provably stalls, and the stage's flag."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xrbench.attacks import ensemble as ens
from xrbench.attacks.manipulation import manipulate, manipulation_variant, ordered_pairs
from xrbench.errors import XRBenchError
from xrbench.explainers import get_explainer


class Cubic(nn.Module):
    """Two logits on a 1x4x4 image: ``z0 = sum(x) + (c / 3) * (x[k] - centre)^3``, ``z1 = 0``.

    The gradient map of class 0 is 1 at every pixel but pixel k, where it is
    ``1 + c * (x[k] - centre)^2``: even in ``x[k] - centre``. At ``x[k] = centre`` the map's
    derivative is exactly 0, so the manipulation's objective has a zero gradient there (its
    output term is 0 at the victim too): Adam and signed steps cannot leave it, a random start
    can. A little away from the centre the gradient is small and the map changes only after a
    long way: Adam at a small learning rate crawls, signed steps of eps / 10 do not."""

    def __init__(self, centre: float, c: float = 100.0, k: int = 5) -> None:
        super().__init__()
        self.register_buffer("centre", torch.tensor(centre))
        self.c, self.k = c, k
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, for the device lookup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        d = flat[:, self.k] - self.centre
        z0 = self.scale * flat.sum(dim=1) + self.c / 3.0 * d ** 3
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


def _images(victim_k: float, target_k: float) -> torch.Tensor:
    """A victim and a target image: 0.5 everywhere but pixel 5."""
    x = torch.full((2, 1, 4, 4), 0.5)
    x.view(2, -1)[0, 5], x.view(2, -1)[1, 5] = victim_k, target_k
    return x


def _run(model: nn.Module, attack, budget: ens.Budget, images: torch.Tensor
         ) -> dict[str, torch.Tensor]:
    pairs = torch.tensor([[0, 1]])
    return ens.attack_pairs(model, get_explainer("gradient"), images, pairs, attack, budget)


def test_worst_case_known_answer() -> None:
    # three attacks, four pairs; pair 3: no candidate keeps the class -> Expl@start
    expl = torch.tensor([[5.0, 1.0, 3.0, 0.5],
                         [4.0, 2.0, 0.1, 0.2],
                         [6.0, 0.5, 3.0, 0.1]])
    kept = torch.tensor([[True, True, True, False],
                         [True, True, False, False],
                         [True, False, True, False]])
    start = torch.tensor([9.0, 9.0, 9.0, 9.0])
    worst, winner = ens.worst_case(expl, kept, start)
    assert worst.tolist() == [4.0, 1.0, 3.0, 9.0]
    assert winner.tolist() == [1, 0, 0, -1]  # ties go to the first attack
    # at most every attack's value where that attack kept the class
    assert bool((worst.unsqueeze(0) <= torch.where(kept, expl, torch.inf)).all())


class Gated(nn.Module):
    """``logits = [g(x) - m, m - g(x)]`` with ``g(x) = sum(softplus(V x))``: the class follows
    g, but both classes' maps are +-grad g, one sum-normalised map. So a candidate x' = x_t has
    ``L_e(x', x_t) = 0`` for every pair, whether or not it keeps the victim's class."""

    def __init__(self, m: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.v = nn.Linear(16, 8)
        self.m = m

    def g(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.v(x.flatten(1))).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.g(x)
        return torch.stack([g - self.m, self.m - g], dim=1)


def test_candidate_that_changes_the_class_is_never_counted() -> None:
    """An attack that returns the target image itself: L_e = 0 on every pair of a model whose
    maps do not depend on the class, so it would win every pair; where the target's class
    differs from the victim's its candidate is not a manipulation and must not count."""
    images = torch.rand(6, 1, 4, 4)
    model = Gated(0.0).eval()
    with torch.no_grad():  # the boundary between the 3rd and 4th image: both classes
        model.m = float(model.g(images).sort().values[2:4].mean())
    pairs = ordered_pairs(6)
    budget = ens.Budget(iterations=5, lr=1e-2, eps_pgd=0.3, seed=0)
    expl = get_explainer("gradient")

    def to_target(model, explainer, x_victim, x_target, *, pairs, budget):
        return x_target.clone()

    got = ens.attack_pairs(model, expl, images, pairs, to_target, budget, pair_batch=7)
    with torch.no_grad():
        preds = model(images).argmax(1)
    same = preds[pairs[:, 0]] == preds[pairs[:, 1]]
    assert bool((~same).any()) and bool(same.any())  # both kinds of pair are there
    assert torch.equal(got["kept"], same)
    assert torch.allclose(got["expl_end"], torch.zeros(len(pairs)), atol=1e-12)
    def stay(model, explainer, x_victim, x_target, *, pairs, budget):
        return x_victim.clone()  # keeps the class; L_e is Expl@start

    honest = ens.attack_pairs(model, expl, images, pairs, stay, budget, pair_batch=7)
    assert bool(honest["kept"].all()) and bool((honest["expl_end"] > 1e-9).all())
    worst, winner = ens.worst_case(torch.stack([honest["expl_end"], got["expl_end"]]),
                                   torch.stack([honest["kept"], got["kept"]]),
                                   torch.full((len(pairs),), 1.0))
    assert torch.equal(worst[~same], honest["expl_end"][~same])  # the cheat is not counted
    assert bool((winner[~same] == 0).all())
    assert bool((worst[same] <= 1e-12).all()) and bool((winner[same] == 1).all())


def test_restart_leaves_a_stationary_victim_where_adam_and_signed_cannot() -> None:
    model = Cubic(centre=0.5).eval()
    images = _images(0.5, 0.9)
    budget = ens.Budget(iterations=40, lr=1e-2, eps_pgd=0.3, seed=0)
    dombrowski = _run(model, ens.dombrowski, budget, images)
    signed = _run(model, ens.signed, budget, images)
    restart = _run(model, ens.restart, budget, images)
    start = manipulate(model, get_explainer("gradient"), images[:1], images[1:],
                       iterations=1, lr=0.0).expl_start
    # the gradient at the victim is exactly zero: neither Adam nor signed steps move
    assert torch.equal(dombrowski["expl_end"], start)
    assert torch.equal(signed["expl_end"], start)
    assert bool(restart["kept"].all())
    assert float(restart["expl_end"]) < 0.1 * float(start)


def test_signed_outruns_adam_at_the_protocols_learning_rate() -> None:
    model = Cubic(centre=0.49).eval()   # the victim sits 0.01 off the centre
    images = _images(0.5, 0.9)
    # quick's learning rate on digits and a short budget: Adam moves at most lr per step
    budget = ens.Budget(iterations=20, lr=7.5e-4, eps_pgd=0.3, seed=0)
    dombrowski = _run(model, ens.dombrowski, budget, images)
    signed = _run(model, ens.signed, budget, images)
    assert bool(signed["kept"].all()) and bool(dombrowski["kept"].all())
    assert float(signed["expl_end"]) < 0.25 * float(dombrowski["expl_end"])
    worst, winner = ens.worst_case(torch.stack([dombrowski["expl_end"], signed["expl_end"]]),
                                   torch.stack([dombrowski["kept"], signed["kept"]]),
                                   dombrowski["expl_end"])
    assert winner.tolist() == [1] and torch.equal(worst, signed["expl_end"])


def test_smoothed_at_divisor_one_is_the_paper_attack(tiny_convnet) -> None:
    model, images = tiny_convnet
    expl = get_explainer("grad_x_input")
    x_v, x_t = images[:4], images[4:8]
    plain = manipulate(model, expl, x_v, x_t, iterations=6, lr=1e-2)
    same = manipulation_variant(model, expl, x_v, x_t, iterations=6, lr=1e-2,
                                surrogate=ens.smoothed_copy(model, 1.0))
    assert plain.x_adv is not None and same.x_adv is not None
    assert torch.equal(plain.x_adv, same.x_adv)
    assert torch.equal(plain.expl_end, same.expl_end)
    smooth = ens.smoothed_copy(model, 3.0)
    betas = [m.beta for m in model.modules() if isinstance(m, nn.Softplus)]
    assert betas and [m.beta for m in smooth.modules() if isinstance(m, nn.Softplus)] == \
        [b / 3.0 for b in betas]
    assert [m.beta for m in model.modules() if isinstance(m, nn.Softplus)] == betas


def test_restart_start_is_keyed_per_pair() -> None:
    x = torch.rand(5, 1, 4, 4)
    pairs = torch.tensor([[0, 1], [0, 2], [3, 4], [4, 3], [2, 0]])
    budget = ens.Budget(iterations=1, lr=1e-3, eps_pgd=0.3, seed=7)
    whole = ens.restart_start(x, pairs, budget)
    parts = torch.cat([ens.restart_start(x[:2], pairs[:2], budget),
                       ens.restart_start(x[2:], pairs[2:], budget)])
    assert torch.equal(whole, parts)
    assert float((whole - x).abs().max()) <= 0.25 * 0.3 + 1e-7
    assert not torch.equal(whole[0], ens.restart_start(x[:1], pairs[:1],
                                                       ens.Budget(1, 1e-3, 0.3, seed=8))[0])


def test_attack_sensitive_flag_known_answers() -> None:
    from xrbench.stages import attack_sensitive

    end = {"value": 10.0, "ci": [9.0, 11.0]}
    assert attack_sensitive({"value": 7.0, "ci": [6.0, 8.0]}, end)          # -30%, disjoint
    assert not attack_sensitive({"value": 8.5, "ci": [8.0, 8.9]}, end)      # only -15%
    assert not attack_sensitive({"value": 7.0, "ci": [6.0, 9.5]}, end)      # overlapping
    assert not attack_sensitive({"value": None, "ci": None}, end)


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[:1], "shaped"),
    (lambda x: x + 2.0, "outside"),
    (lambda x: x * float("nan"), "NaN"),
    (lambda x: x.long(), "float tensor"),
])
def test_a_bad_candidate_is_refused(bad, message) -> None:
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(XRBenchError, match=message):
        ens.check_candidates(bad(x), x)


@pytest.fixture
def tiny_convnet() -> tuple[nn.Module, torch.Tensor]:
    from xrbench.data import dataset_card
    from xrbench.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet", dataset_card("digits")).eval()
    return model, torch.rand(8, 1, 8, 8)


def test_paper_runs_the_ensemble_on_the_central_images_pairs() -> None:
    """PROTOCOL 5.8 lets ``paper`` run the ensemble on a documented fixed subset of its pairs:
    the ordered pairs among the 5 most central images of each cluster (50 images, 2450
    pairs, as many as ``quick``); ``quick`` runs it on every pair."""
    from types import SimpleNamespace

    from xrbench.protocol import get_profile
    from xrbench.stages import Ensemble

    paper = SimpleNamespace(images=torch.zeros(150, 1, 2, 2), profile=get_profile("paper"))
    rows = Ensemble().pair_rows(paper)
    pairs = ordered_pairs(150)[rows]
    central = {c * 15 + j for c in range(10) for j in range(5)}
    assert len(rows) == 50 * 49 == len(set(rows.tolist()))
    assert set(pairs.flatten().tolist()) == central
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    assert torch.equal(rows, rows.sort().values)  # victim-major, as the manipulation's
    quick = SimpleNamespace(images=torch.zeros(50, 1, 2, 2), profile=get_profile("quick"))
    assert torch.equal(Ensemble().pair_rows(quick), torch.arange(50 * 49))
