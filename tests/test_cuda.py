"""The CUDA paths (issue 10, item 8): skipped where no CUDA device is present (this project's CPU
machines and CI), run wherever one is. Each compares the CUDA result with the CPU one:
the frozen inference copies the attacks and RelEx differentiate, keyed random numbers,
RelEx masks, the manipulation, and a whole smoke evaluation with ``device="cuda"``."""

from __future__ import annotations

import math

import pytest
import torch

from xrbench import api
from xrbench.explainers import get_explainer
from xrbench.inference import frozen_inference_copy

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _grad_map(model: torch.nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """d/dx of sum(grad_x_input map squared): a double backward through ``model``."""
    x = x.clone().requires_grad_(True)
    a = get_explainer("grad_x_input")(model, x, c, create_graph=True)
    return torch.autograd.grad((a ** 2).sum(), x)[0]


@pytest.mark.parametrize("kw", [dict(), dict(double_backward=False, channels_last=True)])
def test_frozen_inference_copy_matches_the_model_on_cuda(trained_convnet, test_batch, kw
                                                         ) -> None:
    x = test_batch[0].cuda()
    model = trained_convnet.cuda().eval()
    try:
        frozen = frozen_inference_copy(model, **kw)
        assert next(frozen.parameters()).is_cuda
        c = model(x).argmax(1)
        assert torch.allclose(frozen(x), model(x), atol=1e-4, rtol=1e-4)
        if kw.get("double_backward", True):
            assert torch.allclose(_grad_map(frozen, x, c), _grad_map(model, x, c),
                                  atol=1e-5, rtol=1e-3)
        # and the CUDA model agrees with the CPU one
        assert torch.allclose(frozen(x).cpu(), trained_convnet.cpu()(x.cpu()), atol=1e-4,
                              rtol=1e-4)
    finally:
        trained_convnet.cpu()


def test_relex_masks_on_cuda_equal_cpu(trained_convnet, test_batch) -> None:
    from xrbench.keyed_random import stream_keys
    from xrbench.metrics.retrieval import STREAM_RELEX, predict, relex_mask

    x = test_batch[0][:6]
    c = predict(trained_convnet, x)
    keys = stream_keys(3, STREAM_RELEX, torch.arange(6))
    kw = dict(iterations=6, samples=4)
    cpu = relex_mask(trained_convnet, x, c, keys=keys, **kw)
    model = trained_convnet.cuda()
    try:
        gpu = relex_mask(model, x.cuda(), c.cuda(), keys=keys.cuda(), **kw).cpu()
    finally:
        trained_convnet.cpu()
    assert (gpu - cpu).abs().max() < 1e-3


def test_manipulation_on_cuda_equals_cpu(trained_convnet, test_batch) -> None:
    from xrbench.attacks.manipulation import manipulate

    xv, xt = test_batch[0][:4], test_batch[0][4:8]
    ex = get_explainer("grad_x_input")
    cpu = manipulate(trained_convnet, ex, xv, xt, iterations=5, lr=5e-3)
    model = trained_convnet.cuda()
    try:
        gpu = manipulate(model, ex, xv.cuda(), xt.cuda(), iterations=5, lr=5e-3)
    finally:
        trained_convnet.cpu()
    assert torch.allclose(gpu.expl_end.cpu(), cpu.expl_end, rtol=1e-3, atol=1e-9)
    assert torch.equal(gpu.pred_adv.cpu(), cpu.pred_adv)


@pytest.mark.slow
def test_smoke_evaluate_on_cuda_is_close_to_cpu(fixed_checkpoint, tmp_path) -> None:
    common = dict(profile="smoke", checkpoint=str(fixed_checkpoint), progress=False)
    cpu = api.evaluate("normal", out=tmp_path / "cpu", cache_root=tmp_path / "c1",
                       device="cpu", **common)
    gpu = api.evaluate("normal", out=tmp_path / "gpu", cache_root=tmp_path / "c2",
                       device="cuda", **common)
    assert gpu.entry["environment"]["device"] == "cuda"
    assert cpu.entry["environment"]["device"] == "cpu"
    m_cpu, m_gpu = cpu.entry["metrics"], gpu.entry["metrics"]
    assert m_gpu["clean_acc"]["value"] == m_cpu["clean_acc"]["value"]
    assert math.isclose(m_gpu["expl_start"]["value"], m_cpu["expl_start"]["value"],
                        rel_tol=1e-3)
    assert math.isclose(m_gpu["expl_end"]["value"], m_cpu["expl_end"]["value"], rel_tol=0.05)
    assert math.isclose(m_gpu["insertion"]["value"], m_cpu["insertion"]["value"], abs_tol=1.0)
