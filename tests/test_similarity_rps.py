"""Map similarities (cosine, Pearson, SSIM) and RPS, PROTOCOL.md section 5.3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrbench.explainers import get_explainer
from xrbench.metrics.rps import rps
from xrbench.metrics.similarity import cosine_similarity, pearson_correlation, ssim


def _maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, size, size, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.randn(n, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


def _ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """RobustAGA's SSIM written out pixel by pixel: a 7 x 7 window (the outer product of
    exp(-t^2 / 4.5), t = -3..3, summing to 1) over maps padded with 3 zeros, the SSIM
    formula with C1 = 0.01^2, C2 = 0.03^2 at every pixel, the mean over all pixels."""
    t = np.arange(7) - 3
    g = np.exp(-(t ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    pa, pb = np.pad(a, 3), np.pad(b, 3)
    h, w = a.shape
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for r in range(h):
        for c in range(w):
            wa, wb = pa[r:r + 7, c:c + 7], pb[r:r + 7, c:c + 7]
            mu_a, mu_b = (win * wa).sum(), (win * wb).sum()
            va = (win * wa * wa).sum() - mu_a ** 2
            vb = (win * wb * wb).sum() - mu_b ** 2
            cov = (win * wa * wb).sum() - mu_a * mu_b
            vals.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                        / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("size", [5, 8, 28])
def test_ssim_is_robustagas_zero_padded_7_tap_ssim(size: int) -> None:
    a, b = _maps(4, size, seed=size)
    ref = [_ssim_by_hand(a[i].numpy(), b[i].numpy()) for i in range(4)]
    np.testing.assert_allclose(ssim(a, b).numpy(), ref, rtol=0, atol=1e-12)
    # float32 input gives float32 output with the same values
    np.testing.assert_allclose(ssim(a.float(), b.float()).numpy(), ref, atol=1e-5)
    assert ssim(a.float(), b.float()).dtype == torch.float32


def test_ssim_averages_the_border_pixels_too() -> None:
    """Version 3 averages the whole map: a difference confined to a corner pixel moves the
    value (version 2 cropped 3 pixels, so on 8 x 8 maps a corner change counted for
    nothing)."""
    a, _ = _maps(1, 8, seed=5)
    b = a.clone()
    b[0, 0, 0] = 1 - b[0, 0, 0]
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b).item() < 1 - 1e-3


def test_ssim_window_must_be_odd() -> None:
    a, b = _maps(2, 6, seed=0)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, b, win_size=6)


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
