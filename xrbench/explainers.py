"""Explainers (PROTOCOL.md section 3) and the two map normalisations (section 0).

One signature, captum's habit: ``explain(model, x, target, create_graph=False) -> Tensor``
shaped like ``x``. ``x`` is pixel space (N, C, S, S) in [0, 1]; ``target`` is int64 (N,).
Attributions are taken with respect to the normalised input ``z = (x - mean) / std`` (as the
three reference implementations do): ``gradient`` = dF/dz, ``grad_x_input`` = z * dF/dz,
integrated gradients from the baseline z = 0 (the mean image). With ``create_graph=True`` the
map is differentiable with respect to ``x`` and the model parameters (attacks and training
differentiate through it); ``x`` then must be part of the caller's graph or a leaf.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import XRBenchError
from .pooling import plain_pooling
from .registry import explainers


# --- the two map normalisations ----------------------------------------------------------------

def sum_map(a: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attribution -> (N, H, W) map ``h / sum(h)``, h = sum_c |a|.

    Each map sums to 1 (Dombrowski reference ``src/nn/utils.py``). Used by L_e and SEP.
    """
    h = a.abs().sum(dim=1)
    return h / h.sum(dim=(1, 2), keepdim=True)


def max_map(a: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attribution -> (N, H, W) map ``h / (max(h) + 1e-8)``, values in [0, 1].

    RobustAGA ``utils/interpreter.py``. Used by RPS, Insertion, Adv-Insertion.
    """
    h = a.abs().sum(dim=1)
    return h / (h.flatten(1).max(dim=1).values.view(-1, 1, 1) + 1e-8)


def expl_loss(map_a: torch.Tensor, map_b: torch.Tensor) -> torch.Tensor:
    """L_e per pair: ``mean_pixels((map_a - map_b)^2)``; maps (N, H, W) -> (N,)."""
    return ((map_a - map_b) ** 2).flatten(1).mean(dim=1)


# --- helpers -------------------------------------------------------------------------------------

def split_model(model: nn.Module) -> tuple[nn.Module, torch.Tensor | float, torch.Tensor | float]:
    """(net, mean, std) of an XRModel; a plain module is its own net with mean 0, std 1."""
    norm = getattr(model, "normalize", None)
    net = getattr(model, "net", None)
    if norm is not None and net is not None:
        return net, norm.mean, norm.std
    return model, 0.0, 1.0


def _normalised_input(model: nn.Module, x: torch.Tensor, create_graph: bool
                      ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(net, x_used, z): z is a differentiable function of x_used."""
    net, mean, std = split_model(model)
    if not create_graph or not x.requires_grad:
        x = x.detach().requires_grad_(True)
    return net, x, (x - mean) / std


def _target_grad(net: nn.Module, z: torch.Tensor, target: torch.Tensor,
                 create_graph: bool) -> torch.Tensor:
    """d logit_target / dz for each row of z, same shape as z."""
    return _target_grad_and_logits(net, z, target, create_graph)[0]


def _target_grad_and_logits(net: nn.Module, z: torch.Tensor, target: torch.Tensor,
                            create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logit_target / dz shaped like z, logits (N, classes)) from one forward pass."""
    with torch.enable_grad():
        out = net(z)
        sel = out.gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(sel, z, create_graph=create_graph)
    return g, out


class Explainer:
    """Base: an explainer is a callable with a name, a ``differentiable`` flag and params."""

    name = "explainer"
    differentiable = True

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 create_graph: bool = False) -> torch.Tensor:
        """Attribution shaped like ``x`` for class ``target`` (N,); detached unless
        ``create_graph``."""
        a = self.attribute(model, x, target, create_graph)
        return a if create_graph else a.detach()

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  create_graph: bool) -> torch.Tensor:
        raise NotImplementedError

    def attribute_and_logits(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                             create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(map shaped like x, logits ``model(x)`` (N, classes)). Explainers whose map comes
        from the plain forward pass return that pass's logits (one forward instead of two,
        attacks use both); the default runs the model again."""
        return self(model, x, target, create_graph), model(x)

    def params(self) -> dict[str, Any]:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}


@explainers.register("gradient", "gradient of the target logit w.r.t. the normalised input")
@dataclass
class Gradient(Explainer):
    """Vanilla gradient dF_c/dz (Simonyan et al. 2014), z the normalised input."""

    name = "gradient"

    def attribute(self, model, x, target, create_graph=False):
        return self.attribute_and_logits(model, x, target, create_graph)[0]

    def attribute_and_logits(self, model, x, target, create_graph=False):
        with torch.enable_grad():
            net, _, z = _normalised_input(model, x, create_graph)
            g, logits = _target_grad_and_logits(net, z, target, create_graph)
        return (g, logits) if create_graph else (g.detach(), logits.detach())


@explainers.register("grad_x_input", "gradient x input, z * dF_c/dz (the SEP paper's main method)")
@dataclass
class GradXInput(Explainer):
    """Gradient times input, ``z * dF_c/dz`` with z the normalised input."""

    name = "grad_x_input"

    def attribute(self, model, x, target, create_graph=False):
        return self.attribute_and_logits(model, x, target, create_graph)[0]

    def attribute_and_logits(self, model, x, target, create_graph=False):
        with torch.enable_grad():
            net, _, z = _normalised_input(model, x, create_graph)
            g, logits = _target_grad_and_logits(net, z, target, create_graph)
            a = z * g
        return (a, logits) if create_graph else (a.detach(), logits.detach())


@explainers.register("integrated_gradients",
                     "integrated gradients, baseline z = 0 (mean image), 30 steps, times input")
@dataclass
class IntegratedGradients(Explainer):
    """IG (Sundararajan et al. 2017): ``z * mean_k dF_c/dz (k/steps * z)``, k = 1..steps.

    The right Riemann sum, the same as captum's ``method="riemann_right"``.
    """

    steps: int = 30
    name = "integrated_gradients"

    def attribute(self, model, x, target, create_graph=False):
        with torch.enable_grad():
            net, _, z = _normalised_input(model, x, create_graph)
            n = z.shape[0]
            alphas = torch.arange(1, self.steps + 1, device=z.device, dtype=z.dtype) / self.steps
            path = (alphas.view(-1, 1, 1, 1, 1) * z.unsqueeze(0)).flatten(0, 1)  # (steps*N,...)
            g = _target_grad(net, path, target.repeat(self.steps), create_graph)
            return z * g.view(self.steps, n, *z.shape[1:]).mean(dim=0)


@explainers.register("smoothgrad", "SmoothGrad: mean of a base explainer over noisy copies")
@dataclass
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017) around any explainer.

    ``noise``: std of the Gaussian noise in pixel units (0.15 = 15% of the [0,1] range, the
    paper's recommended 10-20%); ``samples`` copies; noise from a generator seeded by ``seed``
    so that a map is a deterministic function of its input alone (the same ``samples`` noise
    patterns are used for every image, so batching never changes a map).
    """

    base: str = "gradient"
    samples: int = 16
    noise: float = 0.15
    seed: int = 0
    name = "smoothgrad"

    def attribute(self, model, x, target, create_graph=False):
        base = get_explainer(self.base)
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        # one noise pattern per sample, shared by every image of the batch: an image's map
        # then depends on that image alone, never on which other images share its batch
        eps = torch.randn((self.samples, 1, *x.shape[1:]), generator=g, device=x.device,
                          dtype=x.dtype)
        xs = (x.unsqueeze(0) + self.noise * eps).flatten(0, 1)
        a = base(model, xs, target.repeat(self.samples), create_graph=create_graph)
        return a.view(self.samples, *x.shape).mean(dim=0)


class _GuidedSoftplus(torch.autograd.Function):
    """Forward softplus_beta(z); backward R -> softplus_beta(R) * sigmoid(beta z).

    The Softplus version of guided backprop (Dombrowski reference ``src/nn/layers``); the
    backward uses differentiable ops, so double backprop (create_graph) works.
    """

    @staticmethod
    def forward(ctx, z, beta):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.beta = beta
        return F.softplus(z, beta=beta)

    @staticmethod
    def backward(ctx, r):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return F.softplus(r, beta=ctx.beta) * torch.sigmoid(ctx.beta * z), None


class _GuidedReLU(torch.autograd.Function):
    """Forward relu(z); backward R -> relu(R) * 1[z > 0] (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx, z):  # type: ignore[override]
        ctx.save_for_backward(z)
        return F.relu(z)

    @staticmethod
    def backward(ctx, r):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return F.relu(r) * (z > 0).to(r.dtype)


def _guided_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    if isinstance(module, nn.Softplus):
        return _GuidedSoftplus.apply(inputs[0], float(module.beta))
    return _GuidedReLU.apply(inputs[0])


@explainers.register("guided_backprop", "guided backprop, Softplus version (Dombrowski et al.)")
@dataclass
class GuidedBackprop(Explainer):
    """Guided backprop w.r.t. z: the backward signal through each activation is rectified."""

    name = "guided_backprop"

    def attribute(self, model, x, target, create_graph=False):
        net, _, _ = split_model(model)
        handles = [m.register_forward_hook(_guided_hook) for m in net.modules()
                   if isinstance(m, (nn.Softplus, nn.ReLU))]
        try:
            with torch.enable_grad():
                net, _, z = _normalised_input(model, x, create_graph)
                return _target_grad(net, z, target, create_graph)
        finally:
            for h in handles:
                h.remove()


# --- evaluation-only explainers through captum --------------------------------------------------

def _captum_input(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    net, mean, std = split_model(model)
    # a leaf that requires grad: captum would otherwise set it and warn on every call
    return net, ((x - mean) / std).detach().requires_grad_(True)


def _no_graph(name: str, create_graph: bool) -> None:
    if create_graph:
        raise XRBenchError(f"explainer {name!r} is evaluation-only (captum) and cannot be "
                           "differentiated; use gradient, grad_x_input, integrated_gradients, "
                           "smoothgrad or guided_backprop inside attacks and training")


@explainers.register("deeplift", "DeepLift through captum, baseline z = 0 (evaluation only)")
@dataclass
class DeepLift(Explainer):
    """captum ``DeepLift`` on ``net`` with the zero (mean-image) baseline in z space."""

    name = "deeplift"
    differentiable = False

    def attribute(self, model, x, target, create_graph=False):
        from captum.attr import DeepLift as _DL

        _no_graph(self.name, create_graph)
        net, z = _captum_input(model, x)
        with plain_pooling(net):  # captum's max-pool rule is keyed by nn.MaxPool2d itself
            return _DL(net).attribute(z, target=target, baselines=0.0).detach()


@explainers.register("lrp", "layer-wise relevance propagation through captum (evaluation only)")
@dataclass
class LRP(Explainer):
    """captum ``LRP`` (epsilon rule) on ``net``; activations pass relevance unchanged."""

    name = "lrp"
    differentiable = False

    def attribute(self, model, x, target, create_graph=False):
        from captum.attr import LRP as _LRP
        from captum.attr._utils.lrp_rules import IdentityRule

        _no_graph(self.name, create_graph)
        net, z = _captum_input(model, x)
        tagged = []
        for m in net.modules():
            if isinstance(m, (nn.Softplus, nn.ReLU, nn.Identity)) and not hasattr(m, "rule"):
                m.rule = IdentityRule()  # type: ignore[attr-defined]
                tagged.append(m)
        try:  # captum picks its rules by exact module type: plain nn.MaxPool2d for the call
            with plain_pooling(net):
                return _LRP(net).attribute(z, target=target).detach()
        except (TypeError, RuntimeError) as exc:
            raise XRBenchError(f"captum LRP does not support this model: {exc}") from exc
        finally:
            for m in tagged:
                if hasattr(m, "rule"):
                    del m.rule


@explainers.register("gradcam", "Grad-CAM at the last conv layer through captum (evaluation only)")
@dataclass
class GradCAM(Explainer):
    """captum ``LayerGradCam`` at the last ``Conv2d`` of ``net``, upsampled bilinearly to the
    input size and repeated over the input channels."""

    name = "gradcam"
    differentiable = False

    def attribute(self, model, x, target, create_graph=False):
        from captum.attr import LayerAttribution, LayerGradCam

        _no_graph(self.name, create_graph)
        net, z = _captum_input(model, x)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise XRBenchError("gradcam needs a model with at least one Conv2d layer")
        cam = LayerGradCam(net, convs[-1]).attribute(z, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.expand(-1, x.shape[1], -1, -1).detach().contiguous()


def get_explainer(name: str, **kwargs: Any) -> Explainer:
    """Create an explainer by registered name (``None`` kwargs are dropped)."""
    return explainers.create(name, **kwargs)
