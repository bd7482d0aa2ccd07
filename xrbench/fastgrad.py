"""Faster double backward for training with trainable weights (PROTOCOL.md section 7).

``hessian``, ``l2_cosd`` and ``sep_pos``/``sep_neg`` differentiate an input gradient with
respect to the parameters: the graph of ``d f / dz`` (taken with ``create_graph=True``) is
itself differentiated, twice for ``hessian``. PyTorch's generic double backward spends time
on two things the result does not need:

* **convolutions.** The backward of a convolution's input gradient
  (``ConvolutionBackwardBackward0``, i.e. ``_convolution_double_backward``) computes the weight
  gradient as a convolution with the batch and channel axes swapped: a kernel as large as
  the feature map (32 x 32 on CIFAR). On a CPU that is 2-3x slower than the ordinary
  weight-gradient kernel. :class:`TrainableDoubleBackwardConv2d` writes a convolution's input
  gradient as ``conv_transpose2d(grad_out, weight)`` (an ordinary, differentiable op, whose
  own backward uses the ordinary kernels) and its weight gradient with the ordinary
  weight-gradient kernel.
* **Softplus.** PyTorch's ``softplus_backward`` has a composite double backward
  (``softplus_double_backward``: seven elementwise ops, differentiated again for ``hessian``);
  :class:`~xrbench.inference.DoubleBackwardSoftplus` writes the derivative as
  ``grad * sigmoid(beta * x)``, so the double backward is one ``sigmoid_backward``.

Both compute the same mathematical function and the same gradients of every order, but not
the same float32 rounding: a model trained with them drifts from one trained without them
(``tests/test_fast_training.py`` measures both). They are therefore **off by default**:
published checkpoints were trained without them, and the recipe hash cannot tell the two
apart. ``XRBENCH_FAST_DOUBLE_BACKWARD=1`` switches them on for the double-backward defenses
(:func:`enabled`).

Only the graph recorded inside :func:`fast_double_backward` is affected; the trainer's
backward pass that follows runs through it as usual.

Measured on one CPU thread, one training step, LeNet on a batch of 64 CIFAR-sized images
(``python benchmarks/train_time_ratios.py --per-step``): ``hessian`` 5.2x -> 4.1x the
``normal`` step, ``l2_cosd`` 3.56x -> 3.45x, SEP (regulariser on) about 2 % faster (its step
is mostly the PGD of its MAT base, which has no double backward). On the digits ConvNet
(8 x 8 images, a step of a few ms) nothing is gained: the per-op overhead of the Python
autograd Functions eats the savings. Not measured on a GPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.inference import DoubleBackwardSoftplus

#: environment variable that switches the fast double backward on ("1") for training
ENV_VAR = "XRBENCH_FAST_DOUBLE_BACKWARD"


def enabled() -> bool:
    """Whether the double-backward defenses use :func:`fast_double_backward` (environment
    variable ``XRBENCH_FAST_DOUBLE_BACKWARD`` set to 1/true/yes; off by default, module doc)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def _engine_needs(t: torch.Tensor) -> bool:
    """Whether the running backward pass wants the gradient of ``t`` (a parameter). PyTorch's
    built-in nodes skip gradients the current ``torch.autograd.grad(..., inputs)`` call does
    not need; a custom Function only sees ``needs_input_grad`` (does ``t`` require grad at
    all), so it asks the engine (``torch._C._will_engine_execute_node``, which
    ``torch.autograd.graph.register_multi_grad_hook`` uses too). Where that private function
    is missing or fails: True (the gradient is computed and thrown away; correct, slower)."""
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)
    if will_execute is None:
        return True
    try:
        return bool(will_execute(torch.autograd.graph.get_gradient_edge(t).node))
    except (RuntimeError, AttributeError, TypeError):
        return True


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]
"""(stride, padding, dilation, groups) of a 2-d convolution."""


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 geometry: Geometry, want_w: bool, want_b: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d/dW, d/db) of ``<grad_out, conv2d(x, W, b)>`` with the ordinary weight-gradient kernel;
    (None, None) parts where not wanted."""
    if not (want_w or want_b):
        return None, None
    stride, padding, dilation, groups = geometry
    _, g_w, g_b = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [weight.shape[0]] if want_b else None, list(stride), list(padding),
        list(dilation), False, [0, 0], groups, [False, want_w, want_b])
    return g_w, g_b


class _Conv2dFn(torch.autograd.Function):
    """``conv2d(x, W, b)``. Its input gradient is :class:`_ConvTranspose2dFn` (differentiable,
    again with the ordinary kernels), its weight gradient the ordinary weight-gradient kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None, geometry: Geometry) -> torch.Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.geometry = geometry
        ctx.in_hw = tuple(x.shape[-2:])
        stride, padding, dilation, groups = geometry
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, bias = ctx.saved_tensors
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = _ConvTranspose2dFn.apply(grad_out, weight, ctx.geometry, ctx.in_hw)
        g_w, g_b = _weight_grad(grad_out, x, weight, ctx.geometry,
                                ctx.needs_input_grad[1] and _engine_needs(weight),
                                ctx.needs_input_grad[2] and _engine_needs(bias))
        return g_x, g_w, g_b, None


class _ConvTranspose2dFn(torch.autograd.Function):
    """``conv_transpose2d(u, W)`` onto an input of size ``in_hw``: the adjoint of
    :class:`_Conv2dFn` in x, i.e. a convolution's input gradient. Its gradient in u is
    :class:`_Conv2dFn`; in W, the ordinary weight-gradient kernel of ``conv2d(grad, W)``
    with output gradient u (``<conv_transpose2d(u, W), v> = <u, conv2d(v, W)>``)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                geometry: Geometry, in_hw: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(u, weight)
        ctx.geometry = geometry
        stride, padding, dilation, groups = geometry
        out_hw = u.shape[-2:]
        # rows/columns of the input that the strided convolution never reached
        output_padding = tuple(
            in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i]
                        + dilation[i] * (weight.shape[2 + i] - 1) + 1)
            for i in range(2))
        return F.conv_transpose2d(u, weight, None, stride, padding, output_padding, groups,
                                  dilation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        u, weight = ctx.saved_tensors
        g_u = None
        if ctx.needs_input_grad[0]:
            g_u = _Conv2dFn.apply(grad, weight, None, ctx.geometry)
        g_w, _ = _weight_grad(u, grad, weight, ctx.geometry,
                              ctx.needs_input_grad[1] and _engine_needs(weight), False)
        return g_u, g_w, None, None


class TrainableDoubleBackwardConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, trainable weights) whose double backward uses ordinary
    convolution kernels only (module doc); same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Conv2dFn.apply(x, self.weight, self.bias,
                               (self.stride, self.padding, self.dilation, self.groups))


def _swappable(module: nn.Module) -> type | None:
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        return TrainableDoubleBackwardConv2d
    if type(module) is nn.Softplus:
        return DoubleBackwardSoftplus
    return None


@contextmanager
def fast_double_backward(model: nn.Module, on: bool | None = None) -> Iterator[nn.Module]:
    """Within the block, every plain ``nn.Conv2d`` (zero padding) and ``nn.Softplus`` of
    ``model`` runs as :class:`TrainableDoubleBackwardConv2d` / ``DoubleBackwardSoftplus``
    (class swapped in place: same parameters, state dict and hooks); restored afterwards.
    Graphs recorded inside stay valid after the block (the trainer's backward pass).
    ``on`` defaults to :func:`enabled`; when false the block changes nothing."""
    if on is None:
        on = enabled()
    swapped: list[tuple[nn.Module, type]] = []
    if on:
        for m in model.modules():
            cls = _swappable(m)
            if cls is not None:
                swapped.append((m, type(m)))
                m.__class__ = cls
    try:
        yield model
    finally:
        for m, cls in swapped:
            m.__class__ = cls
