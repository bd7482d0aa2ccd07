"""Class retrieval with RelEx masks (PROTOCOL.md section 5.5; Lim et al. 2021, "Building
reliable explanations of unreliable neural networks: locally smoothing perspective of model
interpretation", CVPR 2021, section 4.1 and supplement S2.1).

RelEx learns a mask ``m`` (shaped like the image) that keeps the class when it is applied to
noisy copies of the image and removes it when its complement is applied (paper eq. 11;
reference ``JBNU-VL/RelEx`` ``models/saliency/optim_methods/relex.py``, values from
``options.py``). The retrieval rate (paper section 4.1; reference ``utils/evaluations.py``
``RetrievalRate``) is the share of images whose clean prediction is recovered from an
adversarial image seen through a mask: ``E[ argmax_c f_c(m (*) x_adv) == c_{x_0} ]``.

"Applying a mask" multiplies in normalised space (the reference's models take normalised
tensors), i.e. it blends toward the dataset mean colour: in pixel space
``m (*) x = mean + m * (x - mean)``, and ``z = (x - mean) / std`` becomes ``m * z``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xrbench.attacks.pgd import eval_mode, pgd
from xrbench.data import DatasetCard
from xrbench.explainers import split_model
from xrbench.inference import frozen_inference_copy
from xrbench.utils import rows_per_chunk

log = logging.getLogger(__name__)

Explainer = Callable[..., torch.Tensor]

MAX_BATCH_PIXELS = 2 ** 22  # rows x C x H x W per forward pass (RelEx keeps the graph of
# all 2 x samples x images rows); bounds memory, never changes a result but the RNG stream
LOG_EPS = 1e-7  # reference Loss.eps, "to defense log(0)"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, max_batch_pixels: int = MAX_BATCH_PIXELS
            ) -> torch.Tensor:
    """argmax_c f_c(x) for pixel-space x (N, C, H, W); int64 (N,). Eval mode, chunked."""
    rows = rows_per_chunk(x, max_batch_pixels)
    with eval_mode(model):
        return torch.cat([model(x[i:i + rows]).argmax(dim=1) for i in range(0, len(x), rows)])


def apply_mask(model: nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m (*) x`` in pixel space: ``mean + m * (x - mean)`` (= ``m * z`` in normalised space).

    x: (N, C, H, W) in [0, 1]; m: (N, C, H, W) or (N, 1, H, W) in [0, 1]; mean is the model's
    normalisation mean (0 for a plain module). Reference ``utils/evaluations.py``
    (``orig_x * orig_sal`` on normalised tensors).
    """
    _, mean, _ = split_model(model)
    return mean + m * (x - mean)


def relex_mask(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    iterations: int = 50,
    samples: int = 50,
    lr: float = 0.1,
    momentum: float = 0.99,
    lambda1: float = 1e-4,
    lambda2: float = 1.0,
    noise_level: float = 0.1,
    init_max: float = 0.01,
    generator: torch.Generator | None = None,
    max_batch_pixels: int = MAX_BATCH_PIXELS,
    on_chunk: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """RelEx mask m (N, C, H, W) in [0, 1] for pixel-space images x (N, C, H, W) and classes
    ``target`` (N,) (default: the model's prediction on x, as the reference does).

    Per image, with ``z`` its normalised version and ``p_c`` the softmax probability of c
    (paper eq. 11; reference ``relex.py`` ``Loss``; defaults from ``options.py``):

    - ``m`` starts U[0, init_max] (init_max 0.01);
    - each of ``iterations`` (50) steps draws ``samples`` (50) fresh copies
      ``z~ = z + N(0, sigma^2)``, ``sigma = noise_level * (max(z) - min(z))``, max and min over
      the whole image (all channels) in normalised space, as the reference's ``_reset`` does;
    - loss = mean over copies of ``-log p_c(m * z~) + lambda1 * ||m||_1
      - lambda2 * log(1 - p_c((1 - m) * z~) + 1e-7)`` (lambda1 1e-4, lambda2 1.0);
    - its gradient w.r.t. m is divided by its L2 norm over the image (supplement S2.1,
      "normalized gradient"), then an SGD step with heavy-ball momentum as torch.optim.SGD
      does it (``v = momentum * v + g``, ``m = m - lr * v``; lr 0.1, momentum 0.99), then m is
      clamped to [0, 1].

    Images are independent; they are processed in chunks of images (all copies of a chunk
    in one forward pass) sized by ``max_batch_pixels``. Noise is drawn per chunk from
    ``generator``, so masks depend on the chunking only through the random stream. The
    model runs in eval mode; no gradient is left on its parameters. Returns a detached tensor.
    The optimisation differentiates :func:`~xrbench.inference.frozen_inference_copy` of the
    model (BatchNorm folded; the same function to float32 rounding, faster).
    ``on_chunk(n_images)`` is called after each chunk (progress bars).
    """
    net, mean, std = split_model(frozen_inference_copy(model))
    x = x.detach()
    if target is None:
        target = predict(model, x, max_batch_pixels)
    per_chunk = max(1, rows_per_chunk(x, max_batch_pixels) // (2 * samples))
    masks = []
    with eval_mode(model):
        for i in range(0, len(x), per_chunk):
            z = (x[i:i + per_chunk] - mean) / std
            masks.append(_relex_chunk(net, z, target[i:i + per_chunk], iterations, samples,
                                      lr, momentum, lambda1, lambda2, noise_level, init_max,
                                      generator))
            if on_chunk is not None:
                on_chunk(len(z))
    return torch.cat(masks)


def _relex_chunk(net: nn.Module, z: torch.Tensor, c: torch.Tensor, iterations: int,
                 samples: int, lr: float, momentum: float, lambda1: float, lambda2: float,
                 noise_level: float, init_max: float, generator: torch.Generator | None
                 ) -> torch.Tensor:
    """RelEx optimisation for one chunk of normalised images z (n, C, H, W), all at once."""
    n = z.shape[0]
    sigma = noise_level * (z.flatten(1).amax(dim=1) - z.flatten(1).amin(dim=1))  # (n,)
    m = torch.rand(z.shape, generator=generator, device=z.device, dtype=z.dtype) * init_max
    velocity = torch.zeros_like(m)
    c_rows = c.repeat(2 * samples)  # rows ordered (copy, image), foreground then background
    for _ in range(iterations):
        noise = torch.randn((samples, *z.shape), generator=generator, device=z.device,
                            dtype=z.dtype)
        z_noisy = z.unsqueeze(0) + sigma.view(1, n, 1, 1, 1) * noise  # (S, n, C, H, W)
        with torch.enable_grad():
            m.requires_grad_(True)
            fg = m.unsqueeze(0) * z_noisy
            bg = (1 - m).unsqueeze(0) * z_noisy
            logits = net(torch.cat([fg, bg]).flatten(0, 1))  # (2 S n, classes)
            log_p = F.log_softmax(logits, dim=1).gather(1, c_rows.view(-1, 1)).view(2, samples, n)
            preserve = -log_p[0]  # -log p_c(m * z~), (S, n)
            remove = -lambda2 * torch.log(1 - log_p[1].exp() + LOG_EPS)
            l1 = lambda1 * m.abs().flatten(1).sum(dim=1)  # (n,)
            loss = (preserve + remove).mean(dim=0) + l1  # (n,), mean over copies
            (g,) = torch.autograd.grad(loss.sum(), m)
        g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        velocity = momentum * velocity + g / g_norm
        m = (m.detach() - lr * velocity).clamp(0, 1)
    return m.detach()


def explainer_mask(a: torch.Tensor) -> torch.Tensor:
    """Attribution (N, C, H, W) -> mask (N, 1, H, W) in [0, 1] for retrieval.

    ``h = sum_c |a|``, then ``(h - min h) / (q99(h) - min h)`` clamped to [0, 1], q99 the 99th
    percentile of the image's pixels (linear interpolation, numpy's default). RelEx supplement
    S2.1 "post-processing" and reference ``utils/process.py`` ``normalize`` (which also
    subtracts the minimum). The mask broadcasts over channels.
    """
    h = a.abs().sum(dim=1).flatten(1)  # (N, H W)
    lo = h.amin(dim=1, keepdim=True)
    hi = torch.quantile(h, 0.99, dim=1, keepdim=True)
    m = ((h - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return m.view(a.shape[0], 1, *a.shape[2:])


def _explain_chunked(model: nn.Module, explainer: Explainer, x: torch.Tensor,
                     c: torch.Tensor, max_batch_pixels: int) -> torch.Tensor:
    rows = max(1, rows_per_chunk(x, max_batch_pixels) // 64)  # explainers expand the batch
    with eval_mode(model):
        return torch.cat([explainer(model, x[i:i + rows], c[i:i + rows]).detach()
                          for i in range(0, len(x), rows)])


def retrieval(
    model: nn.Module,
    explainer: Explainer,
    x: torch.Tensor,
    *,
    eps_list: Sequence[float] | None = None,
    card: DatasetCard | None = None,
    generator: torch.Generator | None = None,
    pgd_steps: int = 20,
    relex: dict[str, Any] | None = None,
    max_batch_pixels: int = MAX_BATCH_PIXELS,
    progress: bool = False,
) -> dict[str, Any]:
    """Class retrieval rates (PROTOCOL 5.5) for pixel-space images x (N, C, H, W).

    ``c0`` = prediction on clean x. For each eps (default ``card.retrieval_eps``: {2, 4, 8}/255
    RGB, {0.1, 0.2, 0.3} grey), ``x_adv`` = untargeted L-inf PGD against c0 (``pgd_steps`` 20,
    step 2.5 * eps / 20, uniform random start; the reference attacks with CleverHans, whose
    default label is the model's prediction). A hit is ``argmax f(mask (*) image) == c0``.

    ``hits`` keys (reference ``RetrievalRate`` names in brackets), each bool (E, N), E eps:
    ``relex_adv_mask`` [adv_x * adv_sal] mask m(x_adv) for c0;
    ``relex_clean_mask`` [adv_x * orig_sal] mask m(x) for c0;
    ``explainer_adv_mask`` / ``explainer_clean_mask`` the same with
    :func:`explainer_mask` of the entry's explainer; ``no_mask`` x_adv itself (the attack's
    effect). Every mask explains c0, the prediction on the CLEAN image (PROTOCOL 5.5, version
    2; RelEx reference ``generate.py`` takes ``target_cls`` once from the clean image and
    reuses it for every saliency map): a mask of x_adv explaining the prediction on x_adv
    would keep the adversarial class, and its rate would only track PGD accuracy.
    Clean-image keys, bool (N,): ``relex_on_clean`` [orig_x * orig_sal] and
    ``explainer_on_clean``. ``rates`` holds the means (list of E floats, or a float).
    ``relex`` overrides :func:`relex_mask` keywords (defaults = the protocol's). Returns also
    ``eps``, ``pred_clean`` (N,) and ``params``. ``progress`` shows a bar over the RelEx
    masks (one per image for the clean images and for each eps), most of the cost.
    """
    if eps_list is None:
        if card is None:
            raise ValueError("retrieval needs eps_list or a dataset card")
        eps_list = card.retrieval_eps
    bar = tqdm(total=len(x) * (1 + len(eps_list)), desc="retrieval (RelEx masks)",
               unit="mask", disable=not progress)
    relex_kw = {"generator": generator, "max_batch_pixels": max_batch_pixels,
                "on_chunk": bar.update, **(relex or {})}
    x = x.detach()
    c0 = predict(model, x, max_batch_pixels)

    def hit(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return predict(model, apply_mask(model, images, mask), max_batch_pixels) == c0

    m_clean = relex_mask(model, x, c0, **relex_kw)
    e_clean = explainer_mask(_explain_chunked(model, explainer, x, c0, max_batch_pixels))
    hits: dict[str, Any] = {"relex_on_clean": hit(x, m_clean),
                            "explainer_on_clean": hit(x, e_clean)}
    per_eps: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "relex_adv_mask", "relex_clean_mask", "explainer_adv_mask", "explainer_clean_mask",
        "no_mask")}
    for eps in eps_list:
        x_adv = pgd(model, x, c0, float(eps), steps=pgd_steps, random_start=True,
                    generator=generator)
        c_adv = predict(model, x_adv, max_batch_pixels)
        m_adv = relex_mask(model, x_adv, c0, **relex_kw)
        e_adv = explainer_mask(_explain_chunked(model, explainer, x_adv, c0,
                                                max_batch_pixels))
        per_eps["relex_adv_mask"].append(hit(x_adv, m_adv))
        per_eps["relex_clean_mask"].append(hit(x_adv, m_clean))
        per_eps["explainer_adv_mask"].append(hit(x_adv, e_adv))
        per_eps["explainer_clean_mask"].append(hit(x_adv, e_clean))
        per_eps["no_mask"].append(c_adv == c0)
        log.info("retrieval eps %.4g: relex adv-mask %.3f, clean-mask %.3f, no mask %.3f",
                 eps, per_eps["relex_adv_mask"][-1].float().mean().item(),
                 per_eps["relex_clean_mask"][-1].float().mean().item(),
                 per_eps["no_mask"][-1].float().mean().item())
    bar.close()
    n = len(x)
    for k, v in per_eps.items():
        hits[k] = torch.stack(v) if v else torch.zeros(0, n, dtype=torch.bool, device=x.device)
    rates = {k: (v.float().mean(dim=-1).tolist() if v.dim() == 2 else v.float().mean().item())
             for k, v in hits.items()}
    params = {"eps": [float(e) for e in eps_list], "pgd_steps": pgd_steps,
              "pgd_step_size": [2.5 * float(e) / pgd_steps for e in eps_list],
              "pgd_random_start": True,
              "pgd_label": "prediction on clean x",
              "explained_class": "prediction on clean x, for every mask",
              "relex": {**_relex_defaults(), **(relex or {})},
              "explainer_mask": "(h - min) / (q99 - min), clamped to [0, 1]"}
    return {"eps": params["eps"], "hits": hits, "rates": rates, "pred_clean": c0,
            "params": params}


def _relex_defaults() -> dict[str, Any]:
    """The keyword defaults of :func:`relex_mask` that are protocol parameters."""
    sig = inspect.signature(relex_mask)
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind is p.KEYWORD_ONLY
            and k not in ("generator", "max_batch_pixels", "on_chunk")}
