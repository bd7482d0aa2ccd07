"""Shared fixtures: the digits dataset and a small trained digits ConvNet (trained once per
session with a plain loop, so that metric tests do not depend on the trainer)."""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("XRBENCH_OFFLINE", "1")
# never read or write the user's own cache from the tests
os.environ["XRBENCH_CACHE"] = tempfile.mkdtemp(prefix="xrbench-test-cache-")
# ... and leave no cache behind (a session left tens of MB in /tmp before)
atexit.register(shutil.rmtree, os.environ["XRBENCH_CACHE"], ignore_errors=True)

import xrbench  # noqa: E402,F401
from xrbench.data import Dataset, load_dataset  # noqa: E402
from xrbench.models import XRModel, create_model  # noqa: E402

# one thread: the tests use small batches, where a second thread costs more than it
# gives, and a shared CI machine makes oversubscription much worse
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


def _train(model: XRModel, ds: Dataset, epochs: int, seed: int) -> XRModel:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    n = len(ds.train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, 64):
            x, y = ds.train.get_batch(perm[i:i + 64])
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_convnet(digits: Dataset) -> XRModel:
    """ConvNet (Softplus beta 3) trained 8 epochs on digits; about 97% test accuracy."""
    torch.manual_seed(0)
    model = create_model("convnet", digits.card)
    return _train(model, digits, epochs=8, seed=0)


@pytest.fixture(scope="session")
def test_batch(digits: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 32 digits test images (32, 1, 8, 8) and labels."""
    return digits.test.get_batch(torch.arange(32))


@pytest.fixture(scope="session")
def fixed_checkpoint(digits: Dataset, tmp_path_factory) -> Path:
    """A digits convnet checkpoint made without torch's training loop (whose results differ
    between torch versions): conv weights from numpy's seeded generator (He-normal),
    BatchNorm at identity, the last layer fitted in closed form (ridge regression in float64
    on the random features of the training split). The same checkpoint, to float32 rounding,
    under every torch version; 97% clean accuracy on the digits test split."""
    ds, path = digits, tmp_path_factory.mktemp("fixed") / "fixed.pt"
    model = create_model("convnet", ds.card).eval()
    rng = np.random.default_rng(2026)
    state = model.state_dict()
    for name, t in state.items():
        if name.endswith("weight") and t.dim() > 1:  # conv: He-normal
            fan_in = int(np.prod(t.shape[1:]))
            t.copy_(torch.from_numpy(rng.normal(0, math.sqrt(2 / fan_in), t.shape)))
        elif name.endswith(("running_mean", "bias")):
            t.zero_()
        elif name.endswith(("running_var", ".weight")):
            t.fill_(1.0)
    model.load_state_dict(state)
    feats: list[torch.Tensor] = []
    hook = model.net.fc.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    x, y = ds.train.get_batch(torch.arange(len(ds.train)))
    with torch.no_grad():
        model(x)
    hook.remove()
    f = np.concatenate([feats[0].double().numpy(), np.ones((len(y), 1))], axis=1)
    target = np.eye(ds.card.num_classes)[y.numpy()] * 10.0  # logits of about 10 for the class
    w = np.linalg.solve(f.T @ f + 1.0 * np.eye(f.shape[1]), f.T @ target)
    state["net.fc.weight"] = torch.from_numpy(w[:-1].T.copy()).float()
    state["net.fc.bias"] = torch.from_numpy(w[-1].copy()).float()
    torch.save(state, path)
    return path


def require_ray() -> None:
    """Skip a test that needs Ray where Ray is not installed, except with
    ``XRBENCH_REQUIRE_RAY=1`` (CI: ``.ci/run`` sets it), where a missing Ray fails the test:
    the sharded-equals-unsharded and sweep-on-Ray tests must run in CI, not skip."""
    if os.environ.get("XRBENCH_REQUIRE_RAY"):
        import ray  # noqa: F401 - fails loudly in CI
    else:
        pytest.importorskip("ray")
