"""Real Fashion-MNIST (Debian's ``dataset-fashion-mnist``: the four original idx files in
/usr/share/datasets/fashion-mnist/), found with no flag.

Skipped where the package is not installed, unless ``XRBENCH_REQUIRE_FASHION_MNIST=1``
(``.ci/run`` installs the package and sets it), where a missing data set fails the tests.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from xrbench.data import FASHION_MNIST_SHA256, STANDIN_ENV, load_dataset
from xrbench.idx_files import DEBIAN_FASHION_MNIST, IDX_FILES, find_idx_folder

REPO = Path(__file__).resolve().parents[1]
#: the published normal checkpoint a smoke evaluation scores (no training in CI)
PUBLISHED = (REPO / "leaderboard" / "results" / "fashion_mnist" / "convnet" / "guided_backprop"
             / "quick")
#: the smoke entry (and per-example file) that checkpoint gave when this test was written:
#: the scoring-mode reference
SMOKE_REFERENCE = (Path(__file__).resolve().parent / "data" / "fashion_mnist" / "convnet"
                   / "guided_backprop" / "smoke" / "normal-s0.json")


@pytest.fixture(scope="module", autouse=True)
def _real_files() -> None:
    if find_idx_folder([DEBIAN_FASHION_MNIST]) is None:
        if os.environ.get("XRBENCH_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(f"XRBENCH_REQUIRE_FASHION_MNIST=1 but {DEBIAN_FASHION_MNIST} lacks the "
                        "four idx files: apt-get install dataset-fashion-mnist (.ci/run does)")
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture()
def no_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No --data-dir, an empty default data folder, offline, not a stand-in."""
    monkeypatch.setenv("XRBENCH_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setenv("XRBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XRBENCH_OFFLINE", "1")
    monkeypatch.delenv(STANDIN_ENV, raising=False)
    return tmp_path


def test_real_fashion_mnist_counts_balance_card_and_sha256(no_flags: Path) -> None:
    ds = load_dataset("fashion_mnist")
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    for split, n in ((ds.train, 6000), (ds.test, 1000)):
        assert torch.bincount(split.targets, minlength=10).tolist() == [n] * 10
    x, _ = ds.train.get_batch(torch.arange(60000))
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the card's mean and std (the model's normalisation layer) are the training split's
    assert ds.card.mean[0] == pytest.approx(float(x.double().mean()), abs=1e-4)
    assert ds.card.std[0] == pytest.approx(float(x.double().std(unbiased=False)), abs=1e-4)
    assert ds.card.content_sha256 == FASHION_MNIST_SHA256
    assert not (no_flags / "empty-data").exists()  # nothing written where it looked


def test_real_fashion_mnist_equals_torchvisions_reader(tmp_path: Path, no_flags: Path) -> None:
    """The same arrays as torchvision's own idx reader on the decompressed test files."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    ds = load_dataset("fashion_mnist")
    for role in ("test_images", "test_labels"):
        stem = IDX_FILES[role][0]
        (tmp_path / stem).write_bytes(gzip.open(DEBIAN_FASHION_MNIST / f"{stem}.gz").read())
    x, y = ds.test.get_batch(torch.arange(10000))
    images = read_image_file(str(tmp_path / IDX_FILES["test_images"][0]))
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), images)
    assert torch.equal(y, read_label_file(str(tmp_path / IDX_FILES["test_labels"][0])))


def test_shipped_manifests_are_built_on_the_real_data_and_valid() -> None:
    """quick's and smoke's manifests ship (no extractor trains), name the 3-epoch extractor
    and pass the section-4 validity check (intra-cluster L_e below inter-cluster)."""
    from xrbench.subset import packaged_manifest

    for per_cluster in (5, 2):
        m = packaged_manifest("fashion_mnist", per_cluster)
        assert m is not None and m["protocol_version"] == 3
        assert len(m["indices"]) == 10 * per_cluster and len(set(m["indices"])) == 10 * per_cluster
        assert m["extractor"]["recipe"]["epochs"] == 3
        assert m["validity"]["intra_smaller"] is True
        assert m["validity"]["intra_cluster_le"] < m["validity"]["inter_cluster_le"]
        assert m["dataset_sha256"] == FASHION_MNIST_SHA256


@pytest.mark.slow
def test_smoke_evaluate_on_real_fashion_mnist_scores_as_published(no_flags: Path,
                                                                  capsys) -> None:
    """``xrbench evaluate --dataset fashion_mnist --profile smoke`` end to end on the real
    files, with the published normal checkpoint (no training, no extractor: the shipped smoke
    manifest); every number within the scoring-mode band of the reference entry."""
    from xrbench import api
    from xrbench.cli import main
    from xrbench.subset import packaged_manifest

    ckpt = PUBLISHED / "normal-s0.pt"
    res = api.evaluate("normal", "fashion_mnist", "convnet", "guided_backprop", "smoke",
                       checkpoint=str(ckpt), out=no_flags / "out", progress=False, device="cpu")
    entry = res.entry
    assert entry["dataset"]["content_sha256"] == FASHION_MNIST_SHA256
    assert entry["subset"]["manifest_sha256"] == packaged_manifest("fashion_mnist", 2)["sha256"]
    assert entry["timing"]["extractor"] == 0.0
    assert not (no_flags / "cache" / "checkpoints").exists()  # nothing trained
    assert np.isfinite(entry["metrics"]["expl_end"]["value"])
    code = main(["regress", str(SMOKE_REFERENCE), str(res.path), "--mode", "scoring"])
    out = capsys.readouterr().out
    assert code == 0 and "regress (scoring mode): passed" in out, out
