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
- SSIM follows scikit-image ``structural_similarity(im1, im2, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, win_size=7)`` exactly (Wang et al.
  2004), see :func:`ssim`. RobustAGA's ``ssim`` (a pytorch-ssim copy) instead zero-pads a
  7-tap Gaussian, averages over the whole map including the borders and takes L from the
  range of the first batch; its values differ from ours near the borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_K1 = 0.01  # C1 = (K1 L)^2, Wang et al. 2004
SSIM_K2 = 0.03  # C2 = (K2 L)^2
SSIM_SIGMA = 1.5
SSIM_WIN_SIZE = 7
SSIM_TRUNCATE = 3.5  # scikit-image's Gaussian truncation: radius int(3.5 * 1.5 + 0.5) = 5


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


def gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE,
                      dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-t^2 / (2 sigma^2))``, t = -r..r,
    r = int(truncate * sigma + 0.5) (scipy.ndimage's radius): 11 taps for sigma 1.5."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _symmetric_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``pad`` on each side with half-sample symmetric
    reflection (d c b a | a b c d | d c b a), scipy.ndimage's ``mode='reflect'``; valid for
    any pad, also pad > n."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_filter(x: torch.Tensor, sigma: float = SSIM_SIGMA,
                    truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """Separable Gaussian blur of (B, K, H, W) with symmetric ('reflect') borders, same size
    out: scipy.ndimage ``gaussian_filter(mode='reflect', truncate=truncate)`` per channel."""
    w = gaussian_kernel1d(sigma, truncate, dtype=x.dtype, device=x.device)
    r = (w.numel() - 1) // 2
    k = x.shape[1]
    h_idx = _symmetric_index(x.shape[-2], r, x.device)
    w_idx = _symmetric_index(x.shape[-1], r, x.device)
    xp = x.index_select(-2, h_idx).index_select(-1, w_idx)
    xp = F.conv2d(xp, w.view(1, 1, -1, 1).expand(k, 1, -1, 1), groups=k)
    return F.conv2d(xp, w.view(1, 1, 1, -1).expand(k, 1, 1, -1), groups=k)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0,
         win_size: int = SSIM_WIN_SIZE, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1,
         k2: float = SSIM_K2) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004, eq. 13) of each map pair: (N,) in [-1, 1].

    Local statistics use a Gaussian window (sigma 1.5) with population (co)variances;
    C1 = (k1 L)^2, C2 = (k2 L)^2 with L = ``data_range`` = 1 for ``max_map`` maps.

    Borders, exactly as scikit-image ``structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, win_size=7)``:

    - the Gaussian is scipy.ndimage's, truncated at 3.5 sigma, i.e. 11 taps for sigma 1.5
      (scikit-image does not shorten the filter when ``win_size`` is given);
    - the maps are extended by half-sample symmetric reflection ('reflect' mode);
    - the SSIM map is averaged after cropping (win_size - 1) // 2 = 3 pixels from each
      border. ``win_size`` (the protocol's "window 7") sets only this crop and the smallest
      map allowed (H, W >= win_size). On an 8 x 8 map the mean is over the central 2 x 2.

    scikit-image's own default, win_size = 11 (the filter width), rejects maps smaller than
    11 x 11 such as the 8 x 8 digits maps; the protocol fixes 7. Computed in float64.
    """
    a, b = _as_maps(a, b)
    h, w = a.shape[-2:]
    if win_size % 2 != 1 or win_size > min(h, w):
        raise ValueError(f"ssim win_size must be odd and <= the map side, got {win_size} "
                         f"for {h}x{w} maps")
    out_dtype = a.dtype
    a, b = a.double().unsqueeze(1), b.double().unsqueeze(1)
    stats = gaussian_filter(torch.cat([a, b, a * a, b * b, a * b], dim=1), sigma)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.unbind(dim=1)
    var_a, var_b, cov = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                    * (var_a + var_b + c2))
    p = (win_size - 1) // 2
    return s[:, p:h - p, p:w - p].mean(dim=(1, 2)).to(out_dtype)


SIMILARITIES = {"cosine": cosine_similarity, "pcc": pearson_correlation, "ssim": ssim}
"""Name -> function, in the order RPS reports them."""
