"""Benchmark (issue 22 item 5): xrbench's RPS against its peers, side by side in one run on
the same model and images, at the same number of perturbations: captum's
``captum.metrics.sensitivity_max`` and Quantus's ``MaxSensitivity``.

All three perturb each image ``DRAWS`` times uniformly in an L-inf ball of radius 8/255 and
explain every perturbed copy with grad x input at the true label (captum's
``InputXGradient``; Quantus through ``quantus.explain(method="InputXGradient")``, i.e. captum
again). They then reduce differently (RPS: mean cosine similarity of max-normalised maps;
sensitivity-max: the largest norm of the map difference), a cost that is small next to the
explanations. The ratios are seconds per image, peer over xrbench; reported, no target.

Peers are installed in the benchmarks' environment only (``pip install -e ".[dev,bench]"``:
``quantus``; captum is a dependency of xrbench); without Quantus its side is skipped and its
ratio reads "not measured". The ConvNet is untrained (timing does not depend on the weights);
the images are real digits test images.

    python -m pytest benchmarks/test_bench_peers.py -q
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xrbench  # noqa: F401
from xrbench.data import load_dataset
from xrbench.explainers import get_explainer
from xrbench.metrics.rps import rps
from xrbench.models import create_model

from benchutil import pick

N_IMAGES = pick(64, 16)
DRAWS = 10  # the protocol's RPS draws (PROTOCOL 5.3)
EPS = 8 / 255
ROUNDS = pick(5, 2)


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits")
    x, y = ds.test.get_batch(torch.arange(N_IMAGES))
    torch.manual_seed(0)
    model = create_model("convnet", ds.card).eval()
    return model, x, y


def test_xrbench_rps(benchmark, ratios, setup):
    model, x, y = setup
    explain = get_explainer("grad_x_input")
    out = benchmark.pedantic(lambda: rps(model, explain, x, y, eps=(EPS,), draws=DRAWS,
                                         similarities=("cosine",)),
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out["cosine"][EPS].shape == (N_IMAGES,)
    ratios.record("peers/xrbench-rps", benchmark, per=N_IMAGES)


def test_captum_sensitivity_max(benchmark, ratios, setup):
    from captum.attr import InputXGradient
    from captum.metrics import sensitivity_max

    model, x, y = setup
    ixg = InputXGradient(model)
    out = benchmark.pedantic(
        lambda: sensitivity_max(ixg.attribute, x, target=y, perturb_radius=EPS,
                                n_perturb_samples=DRAWS),
        rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out.shape == (N_IMAGES,) and torch.isfinite(out).all()
    ratios.record("peers/captum-sensitivity-max", benchmark, per=N_IMAGES)
    ratios.ratio("captum sensitivity_max vs xrbench RPS (seconds per image)",
                 "peers/captum-sensitivity-max", "peers/xrbench-rps",
                 note=f"{DRAWS} perturbations at 8/255, grad x input, digits ConvNet, "
                      f"{N_IMAGES} images")


def test_quantus_max_sensitivity(benchmark, ratios, setup):
    quantus = pytest.importorskip("quantus")
    model, x, y = setup
    metric = quantus.MaxSensitivity(nr_samples=DRAWS, lower_bound=EPS, disable_warnings=True,
                                    display_progressbar=False)
    xn, yn = x.numpy(), y.numpy()

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=model, x_batch=xn, y_batch=yn, channel_first=True,
                          explain_func=quantus.explain,
                          explain_func_kwargs={"method": "InputXGradient"},
                          batch_size=N_IMAGES, device="cpu")

    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert len(out) == N_IMAGES and np.isfinite(out).all()
    ratios.record("peers/quantus-max-sensitivity", benchmark, per=N_IMAGES)
    ratios.ratio("Quantus MaxSensitivity vs xrbench RPS (seconds per image)",
                 "peers/quantus-max-sensitivity", "peers/xrbench-rps",
                 note=f"{DRAWS} perturbations at 8/255, grad x input (through captum), digits "
                      f"ConvNet, {N_IMAGES} images")
