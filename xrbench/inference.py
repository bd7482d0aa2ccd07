"""Frozen model copies for attacks that differentiate explanations (second derivatives in x).

The explanation manipulation (PROTOCOL.md 5.2) takes, at every Adam step, the gradient of a
loss on ``a(x) = z * dF_c/dz``: a double backward through the model. PyTorch's generic double
backward does work the attack never uses (eval-mode BatchNorm as a full normalisation op, and
the weight gradient of every convolution's backward even when weights are frozen).
:func:`frozen_inference_copy` returns the SAME function of x, up to float32 rounding, with

* every BatchNorm that directly follows a convolution folded into that convolution
  (eval-mode BatchNorm is a per-channel affine map);
* every plain ``nn.Conv2d`` (zero padding) computing its input gradient with
  ``conv_transpose2d``, so the double backward is one more convolution and nothing else;
* every ``nn.Softplus`` computing its derivative as ``sigmoid(beta * x)`` with ordinary ops,
  so the double backward is one ``sigmoid_backward``.

On the digits ConvNet one step of the manipulation's gradient runs about 3x faster on one
CPU thread (``benchmarks/test_bench_double_backward.py`` prints the ratios: 2.9x for 256
pairs on the development machine, BatchNorm folding alone 1.7x). Gradients with respect to
the copy's parameters are not available (they are frozen); the original model is never
modified.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class _Conv2dInputGrad(torch.autograd.Function):
    """conv2d whose backward returns only the input gradient, as a differentiable
    ``conv_transpose2d`` of the output gradient (weights must be frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:  # type: ignore[override]
        ctx.conv = conv
        ctx.in_hw = tuple(x.shape[-2:])
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                        conv.groups)

    @staticmethod
    def backward(ctx,  # type: ignore[override]
                 grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        c: nn.Conv2d = ctx.conv
        out_hw = grad_out.shape[-2:]
        # rows/columns of the input that the strided convolution never reached
        output_padding = tuple(
            ctx.in_hw[i] - ((out_hw[i] - 1) * c.stride[i] - 2 * c.padding[i]
                            + c.dilation[i] * (c.kernel_size[i] - 1) + 1)
            for i in range(2))
        return F.conv_transpose2d(grad_out, c.weight, None, c.stride, c.padding, output_padding,
                                  c.groups, c.dilation), None


class InputGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` with frozen weights whose double backward is a single convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            return super().forward(x)  # weight gradients wanted: the generic path
        return _Conv2dInputGrad.apply(x, self)


class _SoftplusSigmoidGrad(torch.autograd.Function):
    """softplus(x, beta, threshold) with derivative ``sigmoid(beta * x)`` built from
    differentiable ops (equal to PyTorch's in float32, also above the threshold, where both
    are exactly 1)."""

    @staticmethod
    def forward(ctx,  # type: ignore[override]
                x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return F.softplus(x, beta, threshold)

    @staticmethod
    def backward(ctx,  # type: ignore[override]
                 grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(ctx.beta * x), None, None


class DoubleBackwardSoftplus(nn.Softplus):
    """``nn.Softplus`` whose second derivative costs one elementwise op. ``beta`` may be
    changed between calls (the ReLU surrogate's schedule does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SoftplusSigmoidGrad.apply(x, float(self.beta), float(self.threshold))


def _fast_modules(module: nn.Module) -> int:
    """Swap plain Conv2d / Softplus modules inside ``module`` for the classes above, in place
    (same parameters, same state dict); returns how many were swapped."""
    n = 0
    for child in module.modules():
        if type(child) is nn.Conv2d and child.padding_mode == "zeros" \
                and not isinstance(child.padding, str):
            child.__class__ = InputGradConv2d
            n += 1
        elif type(child) is nn.Softplus:
            child.__class__ = DoubleBackwardSoftplus
            n += 1
    return n


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """``net``, put in eval mode, with each BatchNorm that only reads a convolution's output folded
    into it (``torch.fx``); a net that fx cannot trace is returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    from .pooling import use_channels_last_pooling

    pools = use_channels_last_pooling(net, enabled=False)  # fx traces into them otherwise
    try:
        net = fuse(net.train(False), inplace=True)
    except Exception as err:  # fx cannot trace data-dependent control flow; folding is optional
        log.debug("BatchNorm folding skipped for %s: %s", type(net).__name__, err)
    if pools:
        use_channels_last_pooling(net)
    return net


def frozen_inference_copy(model: nn.Module, *, double_backward: bool = True,
                          channels_last: bool = False) -> nn.Module:
    """A deep copy of ``model`` in eval mode, parameters frozen, BatchNorm folded into the
    convolutions and (``double_backward``, the default) the double-backward-friendly
    Conv2d/Softplus swapped in (module doc). A first-order user (RelEx: one gradient in x
    per step) passes ``double_backward=False``: PyTorch's own convolution backward is faster
    for a single backward. ``channels_last`` stores the convolution weights channels-last
    (NHWC), so that activations flow channels-last: on a CPU max-pooling and the
    convolutions of small images run faster (RelEx on digits about 1.3x; call the copy with
    inputs of any layout, results equal to float32 rounding).

    Only ``model.net`` of an :class:`~xrbench.models.XRModel` is rewritten, so explainers still
    find the ``normalize``/``net`` split. Logits agree with the original to float32 rounding.
    """
    out = copy.deepcopy(model).train(False)  # eval mode
    if hasattr(out, "normalize") and isinstance(getattr(out, "net", None), nn.Module):
        out.net = fold_batchnorm(out.net)
    else:
        out = fold_batchnorm(out)
    out.requires_grad_(False)
    if double_backward:
        _fast_modules(out)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out.train(False)  # fx's new GraphModule starts in training mode
