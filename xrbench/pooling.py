"""Max pooling that runs PyTorch's channels-last CPU kernel and returns the same bits.

On a CPU, ``F.max_pool2d`` of a contiguous (NCHW) batch runs a scalar loop per output
pixel; the channels-last kernel compares whole vectors of channels. On the Fashion-MNIST
ConvNet at batch 64 (one thread, 2026-12-07) the NCHW forward of the first pooling layer
took 18 ms and the channels-last one 5 ms, copies to and from channels-last included: the
pooling layers were a fifth of a PGD step, second only to Softplus
(``benchmarks/test_bench_roofline.py``).

Max pooling does no arithmetic. Both kernels scan each window in the same order and keep
the FIRST maximum (strict ``>``, NaN wins), so they return the same values and the same
argmax indices (indices count pixels of one (n, c) plane, whatever the memory layout), and
the gradients, which only route the output gradient to those indices, are the same bits
at every order. Trained checkpoints, attack results and scores are therefore unchanged
(``tests/test_pooling.py`` checks values, indices, first and second derivatives, ties
included, and a training run's weights).

:class:`MaxPool2d` is ``nn.MaxPool2d`` (same arguments, no parameters, same state dict) whose
CPU forward on a 4-D contiguous batch takes the channels-last kernel and gives back a
contiguous result; the backward runs the usual NCHW kernel on the saved indices (faster than
the channels-last backward on these shapes). Anything else (CUDA, 3-D input,
``return_indices``, a channels-last input already) takes ``nn.MaxPool2d``'s own path.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

_CL = torch.channels_last


class _MaxPool2dChannelsLast(torch.autograd.Function):
    """``max_pool2d`` of an NCHW tensor computed by the channels-last kernel; the backward
    is ``max_pool2d_with_indices_backward`` on NCHW tensors (differentiable again: its
    derivative in the output gradient gathers at the same indices)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel_size: list[int], stride: list[int],
                padding: list[int], dilation: list[int], ceil_mode: bool
                ) -> torch.Tensor:  # type: ignore[override]
        out, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=_CL), kernel_size, stride, padding, dilation, ceil_mode)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None, None, None]:  # type: ignore[override]
        x, idx = ctx.saved_tensors
        grad_in = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out.contiguous(), x, *ctx.args, idx)
        return grad_in, None, None, None, None, None


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose CPU forward on a contiguous (N, C, H, W) batch uses the
    channels-last kernel (module doc): the same output, indices and gradients, bit for
    bit, about 3x faster on the small feature maps of the benchmark's ConvNets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or self.return_indices
                or not x.is_contiguous() or x.is_contiguous(memory_format=_CL)
                or not x.dtype.is_floating_point):
            return super().forward(x)
        stride = self.stride if self.stride else self.kernel_size
        return _MaxPool2dChannelsLast.apply(
            x, _pair(self.kernel_size), _pair(stride), _pair(self.padding),
            _pair(self.dilation), bool(self.ceil_mode))


def use_channels_last_pooling(module: nn.Module, enabled: bool = True) -> int:
    """Turn every plain ``nn.MaxPool2d`` inside ``module`` into :class:`MaxPool2d` in place
    (same objects, same arguments: a class swap, as :mod:`xrbench.inference` does for its
    convolutions), or back with ``enabled=False`` (``torch.fx`` traces into a module of
    another package, so BatchNorm folding swaps them back while it traces); returns how
    many modules changed. Results do not change either way (module doc)."""
    old, new = (nn.MaxPool2d, MaxPool2d) if enabled else (MaxPool2d, nn.MaxPool2d)
    n = 0
    for child in module.modules():
        if type(child) is old:
            child.__class__ = new
            n += 1
    return n


@contextlib.contextmanager
def plain_pooling(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with PyTorch's own ``nn.MaxPool2d`` for the block, then back: for code that
    picks its behaviour by a module's exact type (captum's DeepLift and LRP rules, whose
    tables name ``nn.MaxPool2d``; a subclass would silently be treated as linear)."""
    pools = use_channels_last_pooling(module, enabled=False)
    try:
        yield module
    finally:
        if pools:
            use_channels_last_pooling(module)


__all__ = ["MaxPool2d", "plain_pooling", "use_channels_last_pooling"]
