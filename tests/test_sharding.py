"""Sharded evaluation (issue 10): deterministic shard bounds, and a sharded run on a local Ray
cluster writes the entry an unsharded run writes (every metric equal to relative 1e-6)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import require_ray

from xrbench import api
from xrbench.errors import XRBenchError
from xrbench.protocol import get_profile, with_overrides
from xrbench.engine.sharding import shard_bounds


def test_shard_bounds_are_contiguous_aligned_and_balanced() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(10, 1) == [(0, 10)]
    assert shard_bounds(3, 5) == [(0, 1), (1, 2), (2, 3)]  # never an empty shard
    assert shard_bounds(0, 4) == []
    # chunks of 64 pairs: edges on multiples of 64, the last chunk short
    b = shard_bounds(380, 3, align=64)
    assert b == [(0, 128), (128, 256), (256, 380)]
    assert shard_bounds(380, 10, align=64) == [(i, min(i + 64, 380)) for i in range(0, 380, 64)]
    for n, k, a in ((22350, 7, 512), (2450, 4, 512), (50, 6, 1)):
        got = shard_bounds(n, k, a)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(hi == lo2 for (_, hi), (lo2, _) in zip(got, got[1:]))
        assert all(lo % a == 0 for lo, _ in got) and len(got) <= k
        assert got == shard_bounds(n, k, a)  # deterministic


def _numbers(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


#: smoke sizes with chunks of 64 pairs, so that the 380 pairs make 6 chunks to shard
PROFILE = with_overrides(get_profile("smoke"), pair_batch=64)


@pytest.mark.slow
def test_sharded_on_a_local_ray_cluster_equals_unsharded(fixed_checkpoint, tmp_path) -> None:
    require_ray()
    common = dict(profile=PROFILE, checkpoint=str(fixed_checkpoint), progress=False,
                  device="cpu")
    whole = api.evaluate("normal", out=tmp_path / "whole", cache_root=tmp_path / "c1",
                         **common)
    sharded = api.evaluate("normal", out=tmp_path / "sharded", cache_root=tmp_path / "c2",
                           shards=3, executor="ray", **common)
    # nothing came from a cache: both computed every stage
    assert not whole.reused_stages and not sharded.reused_stages
    a, b = _numbers(whole.entry["metrics"]), _numbers(sharded.entry["metrics"])
    assert set(a) == set(b) and len(a) > 100
    moved = {k: (a[k], b[k]) for k in a if not _same(a[k], b[k])}
    assert not moved, moved
    assert whole.entry["flags"] == sharded.entry["flags"]
    assert whole.entry["protocol"] == sharded.entry["protocol"]
    # per-example values too (per pair and per image), exactly
    for key, value in whole.examples.items():
        assert (value == sharded.examples[key]).all(), key
    # the shards were cached, and the merged outputs under the stages' own keys: an
    # unsharded run on that cache computes nothing
    again = api.evaluate("normal", out=tmp_path / "again", cache_root=tmp_path / "c2",
                         **common)
    assert {"manipulation", "retrieval", "insertion", "adv_insertion"} <= set(
        again.reused_stages)
    shard_files = list((tmp_path / "c2" / "stages").glob("manipulation-shard-*.pt"))
    assert len(shard_files) == 3


def test_sharded_in_sequence_resumes_from_cached_shards(fixed_checkpoint, tmp_path,
                                                        monkeypatch) -> None:
    """Locally the shards run one after another; a run interrupted after two retrieval
    shards computes only the third when it is started again."""
    import xrbench.engine.sharding as sharding

    small = with_overrides(PROFILE, relex_iterations=2, relex_samples=2,
                           manipulation_iterations=2, adv_insertion_iterations=2)
    common = dict(profile=small, checkpoint=str(fixed_checkpoint), progress=False,
                  device="cpu", cache_root=tmp_path / "c", shards=3)
    real = sharding.run_shard_task
    ran: list[tuple[str, int]] = []

    def flaky(payload, item):
        if item.stage.name == "retrieval" and len([s for s, _ in ran if s == "retrieval"]) == 2:
            raise KeyboardInterrupt
        ran.append((item.stage.name, item.lo))
        return real(payload, item)

    monkeypatch.setattr(sharding, "run_shard_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        api.evaluate("normal", out=tmp_path / "o", **common)
    assert [lo for s, lo in ran if s == "retrieval"] == [0, 7]  # 20 images: 7 + 6 + 7
    ran.clear()
    res = api.evaluate("normal", out=tmp_path / "o", **common)
    assert [lo for s, lo in ran if s == "retrieval"] == [13]
    whole = api.evaluate("normal", out=tmp_path / "w", **{**common, "shards": 1,
                                                           "cache_root": tmp_path / "c0"})
    assert res.entry["metrics"]["retrieval"] == whole.entry["metrics"]["retrieval"]


def test_bad_shards_and_missing_ray_are_one_line_errors(monkeypatch, tmp_path) -> None:
    import builtins

    with pytest.raises(XRBenchError, match="--shards must be an integer >= 1"):
        api.evaluate("normal", profile="smoke", shards=0, out=tmp_path)
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(XRBenchError, match=r'pip install "xrbench\[ray\]"'):
        api.evaluate("normal", profile="smoke", executor="ray", out=tmp_path)
