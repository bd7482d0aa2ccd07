"""What PyTorch's CPU Softplus costs the training steps (issue 22 item 2), one thread,
interleaved rounds: ``normal``, ``mat`` and ``sep_pos`` steps (ConvNet, Fashion-MNIST shapes,
batch 64) with ``F.softplus`` and with a probe (PyTorch's backward, another forward) that computes the same function as
``(max(b x, 0) + log(1 + exp(-|b x|))) / b`` (threshold as PyTorch's), whose ``log`` is
vectorised where ``log1p`` is not; plus the largest difference between the two functions'
values. The probe is NOT what xrbench trains with: it rounds differently, so a model trained
with it has other weights (docs/benchmarks.md says what the figure is for).

    python benchmarks/softplus_probe.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import train_step  # noqa: E402


def probe_softplus(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """softplus(x) = log(1 + exp(beta x)) / beta, written with a vectorised log."""
    bx = x * beta
    soft = (bx.clamp(min=0) + torch.log(1 + torch.exp(-bx.abs()))) / beta
    return torch.where(bx > threshold, x, soft)


class _ProbeSoftplus(torch.autograd.Function):
    """The probe's value with PyTorch's own (differentiable) ``softplus_backward``: only the
    forward differs from ``F.softplus``."""

    @staticmethod
    def forward(ctx, x, beta, threshold):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.args = (beta, threshold)
        return probe_softplus(x, beta, threshold)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.ops.aten.softplus_backward(grad, x, *ctx.args), None, None


def main() -> int:
    torch.set_num_threads(1)
    x = torch.randn(64, 64, 28, 28)
    for name, fn in (("F.softplus", lambda: F.softplus(x, 3.0, 20.0)),
                     ("probe", lambda: probe_softplus(x, 3.0, 20.0)),
                     ("log1p alone", lambda: torch.log1p(x.abs())),
                     ("exp alone", lambda: torch.exp(x))):
        fn()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        print(f"{name} on 64 x 64 x 28 x 28: {100 * (time.perf_counter() - t0):.1f} ms")
    diff = (F.softplus(x, 3.0, 20.0) - probe_softplus(x, 3.0, 20.0)).abs().max()
    print(f"largest |difference| of the values: {float(diff):.3g}")

    defenses = ("normal", "mat", "sep_pos")
    steps = {d: train_step.training_step(d, "fashion_mnist", "convnet", batch=64)
             for d in defenses}
    plain_forward = nn.Softplus.forward

    def with_probe(step):
        def run() -> float:
            nn.Softplus.forward = lambda self, z: _ProbeSoftplus.apply(z, self.beta, self.threshold)
            try:
                return step()
            finally:
                nn.Softplus.forward = plain_forward
        return run

    steps.update({f"{d} probe": with_probe(train_step.training_step(
        d, "fashion_mnist", "convnet", batch=64)) for d in defenses})
    best = train_step.interleaved_seconds(steps, 4)
    for d in defenses:
        print(f"{d} step: F.softplus {1000 * best[d]:.0f} ms, probe "
              f"{1000 * best[d + ' probe']:.0f} ms ({best[d] / best[d + ' probe']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
