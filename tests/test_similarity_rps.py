"""Map similarities (cosine, Pearson, SSIM) and RPS, PROTOCOL.md section 5.3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrbench.explainers import get_explainer
from xrbench.metrics.rps import rps
from xrbench.metrics.similarity import (cosine_similarity, gaussian_filter, pearson_correlation,
                                        ssim)

skimage_metrics = pytest.importorskip("skimage.metrics")


def _maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, size, size, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.randn(n, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


@pytest.mark.parametrize("size", [8, 32])
def test_ssim_matches_scikit_image(size: int) -> None:
    a, b = _maps(6, size, seed=size)
    ours = ssim(a, b)
    ref = [skimage_metrics.structural_similarity(
        a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, win_size=7) for i in range(6)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    # float32 input gives float32 output with the same values
    np.testing.assert_allclose(ssim(a.float(), b.float()).numpy(), ref, atol=1e-5)
    assert ssim(a.float(), b.float()).dtype == torch.float32


def test_ssim_window_larger_than_map_is_an_error() -> None:
    a, b = _maps(2, 6, seed=0)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, b)


def test_gaussian_filter_matches_scipy_reflect() -> None:
    from scipy.ndimage import gaussian_filter as scipy_gaussian

    a, _ = _maps(1, 8, seed=3)
    ours = gaussian_filter(a.unsqueeze(1))[0, 0].numpy()
    np.testing.assert_allclose(ours, scipy_gaussian(a[0].numpy(), 1.5, mode="reflect",
                                                    truncate=3.5), atol=1e-12)


def test_cosine_and_pearson_match_numpy() -> None:
    a, b = _maps(5, 8, seed=1)
    an, bn = a.flatten(1).numpy(), b.flatten(1).numpy()
    cos = (an * bn).sum(1) / (np.linalg.norm(an, axis=1) * np.linalg.norm(bn, axis=1))
    pcc = [np.corrcoef(an[i], bn[i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(cosine_similarity(a, b).numpy(), cos, atol=1e-12)
    np.testing.assert_allclose(pearson_correlation(a, b).numpy(), pcc, atol=1e-12)


def test_identical_maps_have_similarity_one_and_degenerate_maps_zero() -> None:
    a, _ = _maps(4, 8, seed=2)
    for fn in (cosine_similarity, pearson_correlation, ssim):
        np.testing.assert_allclose(fn(a, a).numpy(), 1.0, atol=1e-12)
    zero, const = torch.zeros(1, 8, 8), torch.full((1, 8, 8), 0.5)
    assert cosine_similarity(zero, a[:1].float()).item() == 0.0
    assert pearson_correlation(const, a[:1].float()).item() == 0.0
    assert pearson_correlation(a[:1], 1 - a[:1]).item() == pytest.approx(-1.0)


def test_rps_eps_zero_is_one_and_decreases_with_eps(trained_convnet, test_batch) -> None:
    x, y = test_batch[0][:6], test_batch[1][:6]
    explainer = get_explainer("grad_x_input")
    out = rps(trained_convnet, explainer, x, y, eps=(0.0, 0.3), draws=3)
    assert set(out) == {"cosine", "pcc", "ssim"}
    for sim in out.values():
        assert sim[0.0].shape == (6,)
        np.testing.assert_allclose(sim[0.0].numpy(), 1.0, atol=1e-5)
        assert (sim[0.3] < sim[0.0] - 1e-3).all()


def test_rps_is_seeded_and_independent_of_batch_size(trained_convnet, test_batch) -> None:
    x, y = test_batch[0][:5], test_batch[1][:5]
    explainer = get_explainer("gradient")
    kw = dict(eps=(4 / 255, 16 / 255), draws=2)

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    big = rps(trained_convnet, explainer, x, y, batch_size=1000, generator=gen(7), **kw)
    small = rps(trained_convnet, explainer, x, y, batch_size=4, generator=gen(7), **kw)
    other = rps(trained_convnet, explainer, x, y, batch_size=1000, generator=gen(8), **kw)
    for s in big:
        for e in big[s]:
            torch.testing.assert_close(big[s][e], small[s][e], atol=1e-5, rtol=0)
    assert not torch.equal(big["cosine"][16 / 255], other["cosine"][16 / 255])
    assert 0.0 < big["cosine"][16 / 255].mean() <= 1.0
