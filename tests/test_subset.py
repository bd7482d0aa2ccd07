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
