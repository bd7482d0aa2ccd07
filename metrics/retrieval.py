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
from xrbench import keyed_random
from xrbench.chunking import (EXPLAINER_EXPANSION, FORWARD_PIXELS, RELEX_PIXELS, chunk_pixels,
                              chunk_slices, map_chunks, rows_per_chunk)

log = logging.getLogger(__name__)

Explainer = Callable[..., torch.Tensor]

LOG_EPS = 1e-7  # reference Loss.eps, "to defense log(0)"

#: stream tags of the keyed random numbers (:mod:`xrbench.keyed_random`)
STREAM_RELEX = 1  # a RelEx mask's initial value and its noisy copies
STREAM_PGD_START = 2  # retrieval's PGD random start
_INIT, _NOISE = 0, 1  # within a RelEx key: the initial mask, the copies of iteration t


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, max_batch_pixels: int | None = None
            ) -> torch.Tensor:
    """argmax_c f_c(x) for pixel-space x (N, C, H, W); int64 (N,). Eval mode, in chunks of
    ``max_batch_pixels`` input values (default :data:`~xrbench.chunking.FORWARD_PIXELS` for
    x's device)."""
    if max_batch_pixels is None:
        max_batch_pixels = chunk_pixels(FORWARD_PIXELS, x.device)
    with eval_mode(model):
        return map_chunks(lambda xc: model(xc).argmax(dim=1), x,
                          rows=rows_per_chunk(x, max_batch_pixels))


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
    keys: torch.Tensor | None = None,
    max_batch_pixels: int | None = None,
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

    Random numbers are keyed (:mod:`xrbench.keyed_random`): image i's initial mask and its
    copies at iteration t are functions of ``keys[i]`` (N,) (32-bit keys, default
    ``key32(0, STREAM_RELEX, i)``) and t alone. So every image's mask is the same whether it
    is optimised alone, in any chunk, shard or order (to float rounding of batched
    convolutions): the optimisation runs every image at once, in chunks of whole images
    (all 2 x ``samples`` rows of an image in one forward pass) of at most
    ``max_batch_pixels`` input values (default :data:`~xrbench.chunking.RELEX_PIXELS` for
    the device).
    The model runs in eval mode; no gradient is left on its parameters; it differentiates
    :func:`~xrbench.inference.frozen_inference_copy` of the model (BatchNorm folded,
    channels-last on a CPU; the same function to float32 rounding, faster). Returns a
    detached tensor.
    ``on_chunk(n_images)`` is called after each chunk (progress bars).
    """
    x = x.detach()
    if keys is None:
        keys = keyed_random.stream_keys(0, STREAM_RELEX, torch.arange(len(x), device=x.device))
    if target is None:
        target = predict(model, x)
    if len(keys) != len(x) or len(target) != len(x):
        raise ValueError(f"relex_mask: {len(x)} images, {len(target)} targets, {len(keys)} keys")
    if max_batch_pixels is None:
        max_batch_pixels = chunk_pixels(RELEX_PIXELS, x.device)
    frozen = frozen_inference_copy(model, double_backward=False,
                                   channels_last=x.device.type == "cpu")
    net, mean, std = split_model(frozen)
    rows = rows_per_chunk(x, max_batch_pixels, expand=2 * samples)  # whole images
    masks = []
    with eval_mode(model):
        for s in chunk_slices(len(x), rows):
            z = (x[s] - mean) / std
            masks.append(_relex_chunk(net, z, target[s], keys[s], iterations, samples, lr,
                                      momentum, lambda1, lambda2, noise_level, init_max))
            if on_chunk is not None:
                on_chunk(len(z))
    return torch.cat(masks) if masks else x.new_zeros(x.shape)


def _relex_chunk(net: nn.Module, z: torch.Tensor, c: torch.Tensor, keys: torch.Tensor,
                 iterations: int, samples: int, lr: float, momentum: float, lambda1: float,
                 lambda2: float, noise_level: float, init_max: float) -> torch.Tensor:
    """RelEx optimisation for one chunk of normalised images z (n, C, H, W), all at once;
    ``keys`` (n,) fix each image's random numbers."""
    n, shape = z.shape[0], z.shape[1:]
    numel = shape.numel()
    keys = keys.to(z.device)
    sigma = noise_level * (z.flatten(1).amax(dim=1) - z.flatten(1).amin(dim=1))  # (n,)
    init_keys = keyed_random.key32(keys, _INIT)
    m = keyed_random.uniform(init_keys, numel, dtype=z.dtype).view(z.shape) * init_max
    velocity = torch.zeros_like(m)
    c_rows = c.repeat(2 * samples)  # rows ordered (copy, image), foreground then background
    for t in range(iterations):
        noise_keys = keyed_random.key32(keys, _NOISE, t)
        noise = keyed_random.normal(noise_keys, samples * numel, dtype=z.dtype)
        noise = noise.view(n, samples, *shape).transpose(0, 1)  # (S, n, C, H, W)
        z_noisy = z.unsqueeze(0) + sigma.view(1, n, 1, 1, 1) * noise
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
    """The explanation of x (N, C, H, W) for classes c (N,), in chunks of
    ``max_batch_pixels / EXPLAINER_EXPANSION`` input values (explainers expand the batch)."""
    rows = rows_per_chunk(x, max_batch_pixels, expand=EXPLAINER_EXPANSION)
    with eval_mode(model):
        return map_chunks(lambda xc, cc: explainer(model, xc, cc).detach(), x, c, rows=rows)


def pgd_start(x: torch.Tensor, eps: float, seed: int, eps_index: int, image_ids: torch.Tensor
              ) -> torch.Tensor:
    """Retrieval's PGD random start, uniform in the L-inf eps-ball around x (N, C, H, W),
    keyed by (seed, eps index, image id) (:mod:`xrbench.keyed_random`): an image's start does
    not depend on the other images of its batch or shard."""
    keys = keyed_random.stream_keys(seed, STREAM_PGD_START, image_ids.to(x.device), eps_index)
    u = keyed_random.uniform(keys, x[0].numel(), dtype=x.dtype).view(x.shape)
    return x + (2 * u - 1) * eps


def retrieval(
    model: nn.Module,
    explainer: Explainer,
    x: torch.Tensor,
    *,
    eps_list: Sequence[float] | None = None,
    card: DatasetCard | None = None,
    seed: int = 0,
    image_ids: torch.Tensor | None = None,
    pgd_steps: int = 20,
    relex: dict[str, Any] | None = None,
    max_batch_pixels: int | None = None,
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
    ``eps``, ``pred_clean`` (N,) and ``params``.

    The N clean images and the E x N adversarial ones get their RelEx masks in ONE batched
    optimisation (:func:`relex_mask`, chunked). Every random number (PGD starts, RelEx
    initial masks and noisy copies) is keyed by ``seed`` and the image's ``image_ids`` (N,)
    (default ``arange(N)``; its index in the subset), so the hits of an image do not depend
    on which other images are scored with it: a shard of the subset scored with its ids gives
    the same hits as the whole subset. ``progress`` shows a bar over the (1 + E) x N masks,
    most of the cost. ``max_batch_pixels``: input values per prediction chunk (default
    :data:`~xrbench.chunking.FORWARD_PIXELS` for x's device; explainer maps take
    1 / :data:`~xrbench.chunking.EXPLAINER_EXPANSION` of it); RelEx's own is
    ``relex["max_batch_pixels"]``.
    """
    if eps_list is None:
        if card is None:
            raise ValueError("retrieval needs eps_list or a dataset card")
        eps_list = card.retrieval_eps
    x = x.detach()
    n, n_eps = len(x), len(eps_list)
    ids = (torch.arange(n) if image_ids is None else image_ids.long()).to(x.device)
    if len(ids) != n:
        raise ValueError(f"retrieval: {n} images but {len(ids)} image ids")
    if max_batch_pixels is None:  # predictions, and explainer maps (EXPLAINER_EXPANSION)
        max_batch_pixels = chunk_pixels(FORWARD_PIXELS, x.device)
    c0 = predict(model, x, max_batch_pixels)

    def hit(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return predict(model, apply_mask(model, images, mask), max_batch_pixels) == c0

    x_adv = [pgd(model, x, c0, float(eps), steps=pgd_steps,
                 x_init=pgd_start(x, float(eps), seed, k, ids))
             for k, eps in enumerate(eps_list)]
    # every RelEx mask at once: slot 0 the clean images, slot k + 1 the images of eps k
    slots = torch.arange(1 + n_eps, device=x.device).repeat_interleave(n)
    keys = keyed_random.stream_keys(seed, STREAM_RELEX, ids.repeat(1 + n_eps), slots)
    with tqdm(total=n * (1 + n_eps), desc="retrieval (RelEx masks)", unit="mask",
              disable=not progress) as bar:
        masks = relex_mask(model, torch.cat([x, *x_adv]), c0.repeat(1 + n_eps), keys=keys,
                           on_chunk=bar.update, **(relex or {})).split(n)
    m_clean = masks[0]
    e_clean = explainer_mask(_explain_chunked(model, explainer, x, c0, max_batch_pixels))
    hits: dict[str, Any] = {"relex_on_clean": hit(x, m_clean),
                            "explainer_on_clean": hit(x, e_clean)}
    per_eps: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "relex_adv_mask", "relex_clean_mask", "explainer_adv_mask", "explainer_clean_mask",
        "no_mask")}
    for k, eps in enumerate(eps_list):
        e_adv = explainer_mask(_explain_chunked(model, explainer, x_adv[k], c0,
                                                max_batch_pixels))
        per_eps["relex_adv_mask"].append(hit(x_adv[k], masks[k + 1]))
        per_eps["relex_clean_mask"].append(hit(x_adv[k], m_clean))
        per_eps["explainer_adv_mask"].append(hit(x_adv[k], e_adv))
        per_eps["explainer_clean_mask"].append(hit(x_adv[k], e_clean))
        per_eps["no_mask"].append(predict(model, x_adv[k], max_batch_pixels) == c0)
        log.info("retrieval eps %.4g: relex adv-mask %.3f, clean-mask %.3f, no mask %.3f",
                 eps, per_eps["relex_adv_mask"][-1].float().mean().item(),
                 per_eps["relex_clean_mask"][-1].float().mean().item(),
                 per_eps["no_mask"][-1].float().mean().item())
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
            and k not in ("keys", "max_batch_pixels", "on_chunk")}
