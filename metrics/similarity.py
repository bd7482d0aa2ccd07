"""Batched similarities between attribution maps (PROTOCOL.md section 5.3).

Every function takes two stacks of maps ``a``, ``b`` shaped (N, H, W) (any extra leading
dimensions are flattened into N; a trailing (N, 1, H, W) channel axis is squeezed) and returns
one value per pair of maps, shaped (N,), in the input's floating dtype and on its device.

Maps here are ``max_map`` outputs, values in [0, 1] (RobustAGA ``utils/interpreter.py``), so
SSIM uses the fixed data range L = 1.

Conventions where the references are silent or differ:

- A map with zero norm (cosine) or zero variance (Pearson) has similarity 0 with anything;
  this is torch ``cosine_similarity``'s convention without its product-of-norms epsilon,
  which would distort maps of small magnitude.
- Pearson uses population moments on both sides of the ratio. RobustAGA
  ``utils/metrics.py::calc_pcc`` divides a population covariance by sample standard
  deviations, which scales r by (n - 1) / n (0.984 on 8 x 8 maps); we report the true r.
- SSIM is computed as RobustAGA ``utils/metrics.py::ssim`` computes it (protocol version 3):
  a 7-tap Gaussian window, zero padding, the mean of the whole SSIM map, see :func:`ssim`;
  L is fixed at 1 (the maps' range) where the reference reads it off the first batch.
  Protocol version 2 used scikit-image's 11-tap window and cropped the border, which on
  8 x 8 maps averaged the central 2 x 2 pixels alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_K1 = 0.01  # C1 = (K1 L)^2, Wang et al. 2004
SSIM_K2 = 0.03  # C2 = (K2 L)^2
SSIM_SIGMA = 1.5  # RobustAGA utils/metrics.py gaussian(window_size, 1.5)
SSIM_WIN_SIZE = 7  # RobustAGA utils/metrics.py ssim(..., window_size=7)


def _as_maps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 2:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.dim() < 2:
        raise ValueError(f"maps must be (N, H, W), got {tuple(a.shape)}")
    if not a.is_floating_point():
        a, b = a.float(), b.float()
    return a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> / (||a|| ||b||) over the pixels of each map: (N, H, W) x2 -> (N,), in [-1, 1].

    RobustAGA ``utils/metrics.py::calc_cossim``; 0 if either map is all zeros.
    """
    a, b = _as_maps(a, b)
    a, b = a.flatten(1), b.flatten(1)
    return _safe_ratio((a * b).sum(1), a.norm(dim=1) * b.norm(dim=1))


def pearson_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r over the pixels of each map, the cosine of the centred maps: (N,) in [-1, 1].

    0 if either map is constant (zero variance).
    """
    a, b = _as_maps(a, b)
    a, b = a.flatten(1), b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return _safe_ratio((a * b).sum(1), a.norm(dim=1) * b.norm(dim=1))


def gaussian_window(win_size: int = SSIM_WIN_SIZE, sigma: float = SSIM_SIGMA,
                    dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The 1-D window: ``exp(-t^2 / (2 sigma^2))`` at t = -(w // 2) .. w // 2, normalised to
    sum 1 (7 taps for the protocol's window; the 2-D window is its outer product)."""
    t = torch.arange(win_size, dtype=dtype, device=device) - win_size // 2
    w = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return w / w.sum()


def gaussian_blur_zero_pad(x: torch.Tensor, win_size: int = SSIM_WIN_SIZE,
                           sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(B, K, H, W) filtered with the 2-D window, zero padding of ``win_size // 2`` pixels on
    each side, same size out (separable: the outer-product window over zero-padded maps)."""
    w = gaussian_window(win_size, sigma, dtype=x.dtype, device=x.device)
    k, p = x.shape[1], win_size // 2
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(k, 1, -1, 1), padding=(p, 0), groups=k)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(k, 1, 1, -1), padding=(0, p), groups=k)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0,
         win_size: int = SSIM_WIN_SIZE, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1,
         k2: float = SSIM_K2) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of each map pair: (N,) in [-1, 1].

    As RobustAGA ``utils/metrics.py::ssim`` (PROTOCOL 5.3, version 3): local means
    ``mu = G * a`` and (co)variances ``G * (a b) - mu_a mu_b`` with ``G`` the normalised
    ``win_size``-tap Gaussian window (sigma 1.5) applied with zero padding of
    ``win_size // 2`` pixels, so the SSIM map has the maps' own size; C1 = (k1 L)^2,
    C2 = (k2 L)^2 with L = ``data_range`` = 1 for ``max_map`` maps; the per-pair value is
    the mean of the SSIM map over all of its pixels, borders included. Computed in float64.
    """
    if win_size % 2 != 1 or win_size < 1:
        raise ValueError(f"ssim win_size must be a positive odd number, got {win_size}")
    a, b = _as_maps(a, b)
    out_dtype = a.dtype
    a, b = a.double().unsqueeze(1), b.double().unsqueeze(1)
    stats = gaussian_blur_zero_pad(torch.cat([a, b, a * a, b * b, a * b], dim=1), win_size,
                                   sigma)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.unbind(dim=1)
    var_a, var_b, cov = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                    * (var_a + var_b + c2))
    return s.mean(dim=(1, 2)).to(out_dtype)


SIMILARITIES = {"cosine": cosine_similarity, "pcc": pearson_correlation, "ssim": ssim}
"""Name -> function, in the order RPS reports them."""
