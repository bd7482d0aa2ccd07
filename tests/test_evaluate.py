"""The evaluate pipeline end to end on the smoke profile: a valid entry, stage caching,
resume after an interrupt, user checkpoints, and no silent overwrite."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import xrbench.attacks.manipulation as manip
from xrbench import api
from xrbench.errors import XRBenchError
from xrbench.leaderboard.schema import read_entry
from xrbench.protocol import get_profile, with_overrides

FAST = {"epochs": "2"}
# three manipulation chunks, so that an interrupt can fall between two of them
PROFILE = with_overrides(get_profile("smoke"), pair_batch=128)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return root / "cache", root / "results"


@pytest.fixture(scope="module")
def first_run(dirs):
    cache, out = dirs
    return api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                        cache_root=cache, device="cpu")


def test_entry_is_valid_and_complete(first_run):
    e = read_entry(first_run.path)  # validates against the schema
    assert first_run.path.parts[-5:] == ("digits", "convnet", "grad_x_input", "smoke",
                                         "normal-s0.json")
    m = e["metrics"]
    assert 80 <= m["clean_acc"]["value"] <= 100 and m["pgd_acc"]["value"] <= m["clean_acc"]["value"]
    assert m["expl_end"]["value"] < m["expl_start"]["value"]  # the attack lowered L_e
    lo, hi = m["expl_end"]["ci"]
    assert lo <= m["expl_end"]["value"] <= hi
    assert e["subset"]["n_images"] == 20 and e["subset"]["n_pairs"] == 380
    assert m["expl_end"]["n"] == 380
    assert set(m["rps"]) == {"cosine", "pcc", "ssim"}
    assert set(m["rps"]["cosine"]) == {"4/255", "8/255", "16/255"}
    assert set(m["retrieval"]["relex_adv_mask"]) == {"0.1", "0.2", "0.3"}
    assert len(m["landscape"]["gammas"]) == len(m["landscape"]["explanation"])
    assert all(v > 0 for v in m["landscape"]["explanation"] + m["landscape"]["cross_entropy"])
    assert e["defense"]["recipe"]["epochs"] == 2 and e["checkpoint"]["origin"] == "trained"
    assert e["protocol"]["parameters"]["manipulation"]["iterations"] == 20
    assert e["flags"]["degenerate"] is False


def test_rerun_reuses_everything_and_leaves_the_entry(first_run, dirs):
    cache, out = dirs
    again = api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                         cache_root=cache, device="cpu")
    assert not again.written and again.entry == read_entry(first_run.path)
    assert set(again.reused_stages) >= {"accuracy", "manipulation", "rps", "retrieval"}


def test_stage_code_version_invalidates_only_that_stage(first_run, dirs, monkeypatch):
    from xrbench.stages import RPS, STAGES

    assert all(isinstance(s.version, int) and s.version >= 1 for s in STAGES)
    assert len({s.name for s in STAGES}) == len(STAGES)
    cache, out = dirs
    monkeypatch.setattr(RPS, "version", RPS.version + 1)
    again = api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                         cache_root=cache, device="cpu")
    assert "rps" not in again.reused_stages  # recomputed by the "new" code
    assert {"accuracy", "retrieval", "manipulation"} <= set(again.reused_stages)
    assert again.entry["metrics"]["rps"] == read_entry(first_run.path)["metrics"]["rps"]


def test_interrupted_manipulation_resumes_without_redoing_work(dirs, monkeypatch, tmp_path):
    cache, _ = dirs
    out = tmp_path / "results"
    real = manip.manipulate
    calls = {"n": 0}

    @functools.wraps(real)  # the stage reads the attack's parameters from its signature
    def interrupt_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(manip, "manipulate", interrupt_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        api.evaluate("normal", explainer="gradient", profile=PROFILE, overrides=FAST, out=out,
                     progress=False, cache_root=cache, device="cpu")
    assert calls["n"] == 2
    calls["n"] = 0
    monkeypatch.setattr(manip, "manipulate", functools.wraps(real)(lambda *a, **k: (
        calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1]))
    res = api.evaluate("normal", explainer="gradient", profile=PROFILE, overrides=FAST,
                       out=out, progress=False, cache_root=cache, device="cpu")
    assert calls["n"] == 3  # chunk 1 came from the cache; chunks 2 and 3 ran, then the gallery
    assert res.entry["checkpoint"]["origin"] == "cache"  # training was not redone
    assert "accuracy" in res.reused_stages
    assert res.written and read_entry(res.path)["metrics"]["expl_end"]["n"] == 380


def test_different_run_does_not_overwrite_without_force(first_run, dirs):
    cache, out = dirs
    with pytest.raises(XRBenchError, match="--force"):
        api.evaluate("normal", profile=PROFILE, overrides={"epochs": "1"}, out=out,
                     progress=False, cache_root=cache, device="cpu")
    assert read_entry(first_run.path) == first_run.entry


def test_replace_swaps_an_older_entry_reusing_every_cached_stage(first_run, dirs, tmp_path):
    """An entry written by an older xrbench (here: without the gallery stage's parameters) is
    a different run; ``replace`` writes the new one without recomputing anything cached."""
    cache, out = dirs
    old = json.loads(first_run.path.read_text())
    del old["protocol"]["parameters"]["gallery"]
    first_run.path.write_text(json.dumps(old))
    with pytest.raises(XRBenchError, match="--replace"):
        api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                     cache_root=cache, device="cpu")
    res = api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                       cache_root=cache, device="cpu", replace=True)
    assert res.written
    assert set(res.reused_stages) >= {"accuracy", "manipulation", "gallery", "retrieval"}
    assert read_entry(res.path)["protocol"]["parameters"]["gallery"] == \
        first_run.entry["protocol"]["parameters"]["gallery"]
    assert read_entry(res.path)["metrics"] == first_run.entry["metrics"]


def test_user_checkpoint_is_scored_and_recorded(first_run, dirs, tmp_path, digits):
    cache, _ = dirs
    from xrbench.train import get_trained_model

    trained = get_trained_model(digits, "convnet", "normal", overrides=FAST, progress=False,
                                cache_root=cache)
    weights = tmp_path / "mine.pt"
    torch.save(trained.model.state_dict(), weights)
    res = api.evaluate("normal", profile=PROFILE, checkpoint=str(weights), out=tmp_path / "r",
                       progress=False, cache_root=cache, device="cpu")
    e = res.entry
    assert e["checkpoint"]["origin"] == "user" and e["defense"]["source"] == "user checkpoint"
    assert e["defense"]["reference"] is False  # user weights are never a reference row
    assert e["defense"]["reference_note"] == "user-supplied weights; recipe unknown"
    # same weights, same protocol: the same numbers as the trained run
    assert e["metrics"]["expl_end"] == first_run.entry["metrics"]["expl_end"]
    with pytest.raises(XRBenchError, match="sha256"):
        api.evaluate("normal", profile=PROFILE, checkpoint=str(weights),
                     checkpoint_sha256="0" * 64, out=tmp_path / "r2", progress=False,
                     cache_root=cache, device="cpu")
    json.loads(res.path.read_text())


def test_entry_records_the_parameters_the_code_used(first_run, dirs, monkeypatch, tmp_path):
    import xrbench.metrics.retrieval as ret

    cache, _ = dirs
    p = first_run.entry["protocol"]["parameters"]
    m = p["manipulation"]
    assert (m["map_prefactor"], m["output_prefactor"]) == (1e11, 1e6)  # Dombrowski reference
    assert (m["iterations"], m["lr"]) == (PROFILE.manipulation_iterations,
                                          PROFILE.manipulation_lr)
    assert m["eps"] is None and m["trace_points"] == [0.1, 0.5, 1.0]
    relex = p["retrieval"]["relex"]
    assert (relex["iterations"], relex["samples"]) == (PROFILE.relex_iterations,
                                                       PROFILE.relex_samples)
    assert (relex["lr"], relex["momentum"], relex["noise_level"]) == (0.1, 0.99, 0.1)
    assert p["accuracy"] == {"eps": 0.3, "steps": 10, "step_size": 0.075, "random_start": True,
                             "n_images": 200}
    assert p["subset"] == {"clusters": 10, "per_cluster": 2, "n_images": 20, "pairs": 380}
    # change defaults in the code that runs: the entry records the new values, the stages
    # that use them are recomputed (their cache key holds their parameters), and the
    # numbers move with them, so the record cannot disagree with what ran
    monkeypatch.setitem(manip.manipulate.__kwdefaults__, "map_prefactor", 5e10)
    monkeypatch.setitem(ret.relex_mask.__kwdefaults__, "lr", 0.05)
    res = api.evaluate("normal", profile=PROFILE, overrides=FAST, out=tmp_path,
                       progress=False, cache_root=cache, device="cpu")
    p2 = res.entry["protocol"]["parameters"]
    assert p2["manipulation"]["map_prefactor"] == 5e10 and p2["retrieval"]["relex"]["lr"] == 0.05
    assert {"manipulation", "retrieval"}.isdisjoint(res.reused_stages)
    assert {"accuracy", "rps", "insertion"} <= set(res.reused_stages)
    assert res.entry["metrics"]["expl_end"] != first_run.entry["metrics"]["expl_end"]
    assert res.entry["metrics"]["insertion"] == first_run.entry["metrics"]["insertion"]


def test_entry_records_reference_provenance_and_the_loss_fall(first_run, digits):
    from xrbench.engine.entry import recipe_reference
    from xrbench.metrics.manipulation import second_half_fall
    from xrbench.train import build_recipe

    e = first_run.entry
    assert e["schema_version"] == 3 and e["reported"] is None  # measured, not copied
    assert e["not_applicable"] == {}  # every stage ran
    # --epochs 2 (FAST) is not the reference recipe: the entry says which field differs
    assert e["defense"]["reference"] is False
    assert e["defense"]["recipe_diff"] == {"epochs": {"value": 2, "reference": 25}}
    ref = build_recipe("normal", digits.card, "convnet").to_dict()
    assert recipe_reference("normal", digits.card, "convnet", ref) == {"reference": True}
    # built-in components name their distribution and version
    from xrbench import __version__

    for part in ("defense", "model", "explainer"):
        assert e[part]["distribution"] == {"name": "xrbench", "version": __version__}, part
    assert e["model"]["source"] == e["explainer"]["source"] == "xrbench"
    # the manipulation's loss fall over its second half, as a number beside its flag
    loss = e["metrics"]["manipulation_loss"]
    ex = first_run.examples
    fall = second_half_fall(torch.as_tensor(ex["manipulation/loss_trace"]),
                            [0.1, 0.5, 1.0])
    assert loss["second_half_fall"] == pytest.approx(fall, rel=1e-12)
    assert loss["second_half_fall"] == pytest.approx(
        (loss["at_50"] - loss["at_100"]) / loss["at_50"], rel=1e-9)
    assert loss["tolerance"] == 0.05
    assert e["flags"]["not_converged"] is (loss["second_half_fall"] > 0.05)


def test_reference_is_the_resolved_recipe_without_overrides(digits, monkeypatch):
    """reference: true iff the resolved recipe equals Recipe() resolved for the dataset and
    model; a --set that restates the reference value keeps it; a defense without a
    reference recipe there says why."""
    import xrbench.train as train_mod
    from xrbench.engine.entry import recipe_reference
    from xrbench.train import build_recipe

    card = digits.card
    same = build_recipe("mat", card, "convnet", {"epochs": "25"}).to_dict()
    assert recipe_reference("mat", card, "convnet", same) == {"reference": True}
    changed = build_recipe("mat", card, "convnet", {"epochs": "3", "lr": "0.01"}).to_dict()
    assert recipe_reference("mat", card, "convnet", changed) == {
        "reference": False, "recipe_diff": {"epochs": {"value": 3, "reference": 25},
                                            "lr": {"value": 0.01, "reference": 0.001}}}

    def no_reference(*args, **kwargs):
        raise XRBenchError("SEP has no reference lambda for digits")

    monkeypatch.setattr(train_mod, "build_recipe", no_reference)
    got = recipe_reference("sep_pos", card, "convnet", {"lambda_": 10.0})
    assert got == {"reference": False,
                   "reference_note": "no reference recipe for this dataset and model: SEP has "
                                     "no reference lambda for digits"}


def test_per_example_values_are_kept_beside_the_entry(first_run):
    import numpy as np

    from xrbench.leaderboard.examples import examples_path, read_examples

    e = first_run.entry
    assert e["examples"]["file"] == examples_path(first_run.path).name == "normal-s0.examples.npz"
    ex = read_examples(first_run.path, e)  # sha256-checked, allow_pickle=False
    assert set(ex) == set(first_run.examples)
    m = e["metrics"]
    end = ex["manipulation/expl_end"].astype(np.float64)
    assert end.shape == (380,) and end.mean() == pytest.approx(m["expl_end"]["value"], rel=1e-9)
    pairs = ex["manipulation/pairs"]
    assert (pairs[:, 0] != pairs[:, 1]).all() and len({tuple(r) for r in pairs}) == 380
    assert 100 * ex["accuracy/pgd_correct"].mean() == pytest.approx(m["pgd_acc"]["value"])
    assert ex["accuracy/clean_correct"].shape == (m["clean_acc"]["n"],)
    assert ex["rps/cosine/8/255"].astype(np.float64).mean() == pytest.approx(
        m["rps"]["cosine"]["8/255"]["value"], rel=1e-6)
    assert ex["insertion/scores"].shape == (20,)
    hits = ex["retrieval/hits/relex_adv_mask"]
    assert hits.shape == (3, 20) and hits.dtype == bool
    assert hits[1].mean() == pytest.approx(m["retrieval"]["relex_adv_mask"]["0.2"]["value"])
    assert ex["landscape/explanation"].shape == (5, 20)  # (gammas, sampled pairs)


def test_a_write_that_fails_at_the_end_keeps_the_entry(first_run, dirs, monkeypatch, tmp_path):
    import errno

    import xrbench.leaderboard.schema as schema

    cache, _ = dirs
    real = schema.write_entry
    out = tmp_path / "results"

    def read_only_out(path, entry, **kw):
        if out in path.parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, entry, **kw)

    monkeypatch.setattr(schema, "write_entry", read_only_out)
    with pytest.raises(XRBenchError, match="saved to .*unsaved-results") as err:
        api.evaluate("normal", profile=PROFILE, overrides=FAST, out=out, progress=False,
                     cache_root=cache, device="cpu")
    rescued = cache / "unsaved-results" / first_run.path.relative_to(first_run.path.parents[4])
    assert str(rescued) in str(err.value)
    assert read_entry(rescued)["metrics"] == first_run.entry["metrics"]


def test_output_folder_is_checked_before_any_work(tmp_path, monkeypatch):
    import xrbench.api as api_mod

    monkeypatch.setattr(api_mod, "get_trained_model",
                        lambda *a, **k: pytest.fail("trained before checking --out"))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(XRBenchError, match="is a file"):
            api.evaluate("normal", profile=PROFILE, out=bad, progress=False,
                         cache_root=tmp_path / "c", device="cpu")


def test_a_flipped_bit_in_a_stage_cache_file_is_caught_and_recomputed(first_run, dirs, caplog,
                                                                     tmp_path):
    cache, _ = dirs
    flipped = sorted((cache / "stages").glob("insertion-*.pt"))  # (other tests' keys too)
    for path in flipped:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit, in the middle of the tensor data
        path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="xrbench.engine.runtime"):
        res = api.evaluate("normal", profile=PROFILE, overrides=FAST, out=tmp_path,
                           progress=False, cache_root=cache, device="cpu")
    caught = [p for p in flipped if any(str(p) in r.getMessage() and "sha256" in r.getMessage()
                                        for r in caplog.records)]
    assert len(caught) == 1 and not caught[0].exists()  # this run's file: named, removed
    assert "insertion" not in res.reused_stages and "rps" in res.reused_stages
    assert res.entry["metrics"]["insertion"] == first_run.entry["metrics"]["insertion"]


def test_the_api_takes_a_cache_root_as_a_string(tmp_path) -> None:
    """``api.train(..., cache_root="...")`` as a user types it (a str, not a Path): the
    checkpoint lands in that folder (it raised TypeError on ``str / str`` before)."""
    from xrbench import api

    trained = api.train("digits", "convnet", "normal", overrides={"epochs": "1"},
                        progress=False, cache_root=str(tmp_path / "c"), device="cpu")
    assert trained.path.is_file() and (tmp_path / "c" / "checkpoints") in trained.path.parents
