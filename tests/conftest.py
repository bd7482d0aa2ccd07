"""Shared fixtures: the digits dataset and a small trained digits ConvNet (trained once per
session with a plain loop, so that metric tests do not depend on the trainer)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("XRBENCH_OFFLINE", "1")
# never read or write the user's own cache from the tests
os.environ["XRBENCH_CACHE"] = tempfile.mkdtemp(prefix="xrbench-test-cache-")

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
