"""The frozen subset: nearest-to-centroid selection with ties by index and top-ups, the
manifest's self-hash, and the shipped digits manifests."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from xrbench.errors import XRBenchError
from xrbench.subset import body_sha256, check_manifest, packaged_manifest, select_nearest


def test_select_nearest_orders_by_distance_then_index():
    feats = np.array([[0.0], [2.0], [1.0], [1.0], [10.0], [11.0]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    centroids = np.array([[0.0], [10.0]])
    idx, cid, topups = select_nearest(feats, labels, centroids, per_cluster=3)
    # cluster 0: distances 0, 2, 1, 1 -> 0, then the tie 2 and 3 by index
    assert idx[:3] == [0, 2, 3] and cid == [0, 0, 0, 1, 1, 1]
    # cluster 1 has two members: topped up with the nearest unused image (1, at distance 8)
    assert idx[3:] == [4, 5, 1] and topups == [{"cluster": 1, "missing": 1}]


def test_manifest_hash_detects_edits():
    m = {"dataset": "d", "indices": [1, 2], "cluster_ids": [0, 1], "per_cluster": 1}
    m["sha256"] = body_sha256(m)
    assert check_manifest(copy.deepcopy(m), "x") == m
    m["indices"] = [2, 1]
    with pytest.raises(XRBenchError, match="sha256 mismatch"):
        check_manifest(m, "x")


@pytest.mark.parametrize("per_cluster", [2, 5, 15])
def test_shipped_digits_manifests(per_cluster):
    m = packaged_manifest("digits", per_cluster)
    assert m is not None
    n = 10 * per_cluster
    assert len(m["indices"]) == len(set(m["indices"])) == n
    assert all(0 <= i < 540 for i in m["indices"])
    assert sorted(set(m["cluster_ids"])) == list(range(10))
    assert m["validity"]["intra_cluster_le"] < m["validity"]["inter_cluster_le"]
    assert len(m["extractor"]["checkpoint_sha256"]) == 64


def test_smaller_manifests_are_prefixes_per_cluster():
    """Nearest-first selection: each cluster's quick images are its first paper images."""
    paper, quick = packaged_manifest("digits", 15), packaged_manifest("digits", 5)
    for c in range(10):
        p = [i for i, k in zip(paper["indices"], paper["cluster_ids"]) if k == c]
        q = [i for i, k in zip(quick["indices"], quick["cluster_ids"]) if k == c]
        assert p[:5] == q


def test_a_cached_manifest_that_is_not_an_object_is_a_clear_error(tmp_path):
    import pytest

    from xrbench.errors import XRBenchError
    from xrbench.subset import check_manifest

    with pytest.raises(XRBenchError, match="holds a JSON list, not an object"):
        check_manifest([1, 2], str(tmp_path / "m.json"))


# --- the extractor (PROTOCOL 4.1): trained reference, short recipe, ImageNet weights --------

def _tiny(channels: int = 3, side: int = 8, n_train: int = 32, n_test: int = 40):
    """A small in-memory dataset: per class a bright square at its own place, plus noise."""
    import torch

    from xrbench.data import Dataset, DatasetCard, TensorSplit

    g = torch.Generator().manual_seed(0)

    def split(n: int):
        y = torch.arange(n) % 10
        x = torch.rand(n, channels, side, side, generator=g) * 0.3
        for c in range(10):
            r, k = divmod(c % 4, 2)
            x[y == c, :, r * side // 2:(r + 1) * side // 2, k * side // 2:(k + 1) * side // 2] += 0.5
        return TensorSplit(x.clamp(0, 1), y)

    card = DatasetCard("tiny-subset-test", channels, side, 10, (0.3,) * channels,
                       (0.3,) * channels, n_train, n_test)
    return Dataset(card, split(n_train), split(n_test))


def _random_imagenet_resnet18(path):
    """What torchvision's ImageNet weights file holds, randomly initialised (no download)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_imagenet_extractor_from_a_weights_file(tmp_path):
    import torch
    import torch.nn.functional as F
    import torchvision

    from xrbench.subset import ExtractorSpec, get_manifest, load_imagenet_extractor
    from xrbench.utils import sha256_file

    weights = _random_imagenet_resnet18(tmp_path / "resnet18-imagenet.pth")
    ds = _tiny(channels=1, side=8, n_test=30)
    timing: dict[str, float] = {}
    spec = ExtractorSpec(weights=str(weights))
    m, where = get_manifest(ds, 2, torch.device("cpu"), extractor=spec, progress=False,
                            cache_root=tmp_path, timing=timing)
    digest = sha256_file(weights)
    ext = m["extractor"]
    assert ext["kind"] == "imagenet" and ext["checkpoint_sha256"] == digest
    assert ext["reference"] is False and ext["features"] == "penultimate layer (512-d)"
    assert "224x224" in ext["input"] and "ImageNet mean/std" in ext["input"]
    assert where.endswith(f"tiny-subset-test-k10-n2-imagenet-{digest[:12]}.json")
    assert len(m["indices"]) == len(set(m["indices"])) == 20 and timing["extractor"] > 0
    # no training happened: no checkpoint in the cache
    assert not (tmp_path / "checkpoints").exists()
    again, where2 = get_manifest(ds, 2, torch.device("cpu"), extractor=spec, progress=False,
                                 cache_root=tmp_path, timing=timing)
    assert again == m and where2 == where and timing["extractor"] == 0.0

    # the features are torchvision's resnet18 without fc on the resized, normalised RGB image
    model, d2 = load_imagenet_extractor(str(weights), channels=1)
    assert d2 == digest
    ref = torchvision.models.resnet18(weights=None)
    ref.load_state_dict(torch.load(weights, weights_only=True))
    ref.fc = torch.nn.Identity()
    ref.eval()
    x, _ = ds.test.get_batch(torch.arange(3))
    big = F.interpolate(x.expand(-1, 3, -1, -1), size=(224, 224), mode="bilinear",
                        align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), ref((big - mean) / std))
        assert model(x).shape == (3, 1000)


def test_imagenet_extractor_rejects_wrong_files(tmp_path):
    import torch

    from xrbench.data import DatasetCard
    from xrbench.errors import XRBenchError
    from xrbench.models import create_model
    from xrbench.subset import ExtractorSpec, load_imagenet_extractor

    ours = tmp_path / "cifar-resnet18.pt"  # the project's CIFAR-style ResNet18: other shapes
    card = DatasetCard("c", 3, 32, 10, (0.5,) * 3, (0.25,) * 3)
    torch.save(create_model("resnet18", card).net.state_dict(), ours)
    with pytest.raises(XRBenchError, match="does not fit torchvision's ResNet18"):
        load_imagenet_extractor(str(ours), 3)
    named = _random_imagenet_resnet18(tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(XRBenchError, match="does not start with the f37072fd its name promises"):
        load_imagenet_extractor(str(named), 3)
    with pytest.raises(XRBenchError, match="no such file"):
        ExtractorSpec(weights=str(tmp_path / "absent.pth")).check()
    with pytest.raises(XRBenchError, match="weights_only=True"):
        (tmp_path / "code.pth").write_bytes(b"not a torch file")
        load_imagenet_extractor(str(tmp_path / "code.pth"), 3)


@pytest.mark.slow
def test_short_extractor_is_recorded_cached_apart_and_logged(tmp_path, caplog):
    import logging

    import torch

    from xrbench.subset import ExtractorSpec, get_manifest

    ds = _tiny()
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="xrbench.subset"):
        short, where = get_manifest(ds, 2, cpu, extractor=ExtractorSpec(epochs=1),
                                    progress=False, cache_root=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "xrbench.subset"]
    assert len(lines) == 3 and lines[0].startswith(
        "training the subset's short-recipe extractor (ResNet18, normal, 1 epoch) - once per "
        "dataset, cached; about 0 s on a 2-core CPU")
    # the selection itself says what it does before, and what it took after (issue 23 item 3)
    assert lines[1].startswith(f"building the tiny-subset-test subset (PROTOCOL 4): the "
                               f"extractor's features of the {len(ds.test)} test images, "
                               "k-means into 10 clusters (10 restarts), the 2 images nearest")
    assert lines[2].startswith("subset built in ") and ": 20 images, manifest " in lines[2]
    ext = short["extractor"]
    assert ext["kind"] == "trained" and ext["reference"] is False
    assert ext["recipe"] == {"epochs": 1, "batch_size": 64, "lr": 1e-3}
    assert where.endswith("tiny-subset-test-k10-n2-normal-e1.json")

    caplog.clear()  # the extractor is a cached checkpoint: a rebuild does not train again
    with caplog.at_level(logging.INFO, logger="xrbench.subset"):
        rebuilt, _ = get_manifest(ds, 2, cpu, extractor=ExtractorSpec(epochs=1), rebuild=True,
                                  progress=False, cache_root=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "xrbench.subset"]
    assert rebuilt == short and len(lines) == 2  # no training line: the selection only
    assert lines[0].startswith("building the tiny-subset-test subset (PROTOCOL 4)")
    assert lines[1].startswith("subset built in ") and lines[1].endswith(
        ": 20 images, manifest "
        + str(tmp_path / "manifests" / "tiny-subset-test-k10-n2-normal-e1.json"))
    ckpts = list((tmp_path / "checkpoints" / "tiny-subset-test" / "resnet18").glob("*.pt"))
    assert len(ckpts) == 1

    # the reference manifest is another file; both stay in the cache
    with caplog.at_level(logging.INFO, logger="xrbench.subset"):
        ref, ref_where = get_manifest(ds, 2, cpu, progress=False, cache_root=tmp_path)
    assert "reference extractor (ResNet18, normal, 25 epochs)" in caplog.text
    assert ref_where.endswith("tiny-subset-test-k10-n2.json")
    assert ref["extractor"]["reference"] is True and ref["extractor"]["recipe"]["epochs"] == 25
    assert ref["sha256"] != short["sha256"]
    assert sorted(p.name for p in (tmp_path / "manifests").iterdir()) == [
        "tiny-subset-test-k10-n2-normal-e1.json", "tiny-subset-test-k10-n2.json"]


def test_smoke_takes_the_shipped_reference_manifest(digits, tmp_path):
    import torch

    from xrbench.protocol import get_profile
    from xrbench.subset import ExtractorSpec, get_manifest

    # protocol v3 (PROTOCOL 4.1, 6): 25 epochs for paper, 3 for quick, 1 for smoke
    assert [get_profile(p).extractor_epochs for p in ("paper", "quick", "smoke")] == [None, 3, 1]
    for name, per_cluster in (("smoke", 2), ("quick", 5)):
        prof = get_profile(name)
        m, where = get_manifest(digits, prof.per_cluster, torch.device("cpu"),
                                extractor=ExtractorSpec(prof.extractor_epochs), progress=False,
                                cache_root=tmp_path)
        assert where == "package" and m == packaged_manifest("digits", per_cluster)
    assert not (tmp_path / "checkpoints").exists()  # no extractor trained


def test_validity_with_one_image_per_cluster_does_not_apply():
    """No intra-cluster pairs: None (not NaN, which is not JSON), and no failed check."""
    import torch

    from xrbench.models import create_model
    from xrbench.subset import validity_check

    ds = _tiny()
    torch.manual_seed(0)
    model = create_model("convnet", ds.card).eval()
    x, _ = ds.test.get_batch(torch.arange(10))
    v = validity_check(model, x, list(range(10)))
    assert v["intra_cluster_le"] is None and v["intra_smaller"] is None
    assert v["inter_cluster_le"] > 0
    v2 = validity_check(model, x, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert isinstance(v2["intra_cluster_le"], float) and isinstance(v2["intra_smaller"], bool)


def test_the_extractor_line_says_what_it_costs_and_what_avoids_it() -> None:
    """Issue 23 item 3: before a long step, its cost on a CPU and the way around it."""
    import torch

    from xrbench.data import dataset_card
    from xrbench.subset import EXTRACTOR_CPU_SECONDS, ExtractorSpec

    line = ExtractorSpec(3, None).training_line(3, dataset_card("cifar10"), torch.device("cpu"))
    hours = EXTRACTOR_CPU_SECONDS * 50_000 * 32 * 32 * 3 / 3600
    assert f"about {hours:.1f} h on a 2-core CPU" in line
    assert "--extractor-weights" in line and "shipped manifest" in line
    # on a GPU the CPU measurement says nothing
    assert "CPU" not in ExtractorSpec(3, None).training_line(3, dataset_card("cifar10"),
                                                              torch.device("cuda"))
