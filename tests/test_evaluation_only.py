"""Evaluation-only explainers (captum's ``deeplift``, ``lrp``, ``gradcam``) are scored on every
stage that does not differentiate through their maps; the two stages that do (the targeted
manipulation and the Adv-Insertion frame attack) are recorded as not applicable with the
reason, in the entry, the command's summary and the leaderboard, and the run never fails for
it (issue 12 item 3). Real smoke runs through the command line, one shared cache."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xrbench import api
from xrbench.cli import main
from xrbench.explainers import get_explainer
from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.render import render_markdown
from xrbench.leaderboard.schema import load_entries, read_entry
from xrbench.engine.stage import Stage, run_stages
from xrbench.stages import STAGES

EXPLAINERS = ("deeplift", "lrp", "gradcam")
ATTACKS = {"manipulation", "ensemble", "adv_insertion", "gallery"}  # stages that differentiate through the map


def _evaluate(explainer: str, results: Path) -> int:
    return main(["evaluate", "--explainer", explainer, "--profile", "smoke", "--epochs", "1",
                 "--out", str(results), "--device", "cpu", "--quiet"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """``xrbench evaluate --explainer E --profile smoke --epochs 1`` for each evaluation-only
    explainer, the cache in a temporary folder (XRBENCH_CACHE): the model trains once."""
    root = tmp_path_factory.mktemp("evaluation-only")
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XRBENCH_CACHE", str(root / "cache"))
        codes = {name: _evaluate(name, results) for name in EXPLAINERS}
    assert codes == {name: 0 for name in EXPLAINERS}  # no run fails
    return {"root": root, "results": results,
            "paths": {name: results / "digits" / "convnet" / name / "smoke" / "normal-s0.json"
                      for name in EXPLAINERS}}


def _values(tree: dict[str, Any]) -> list[float]:
    """Every metric value below ``tree`` ({eps: metric})."""
    return [m["value"] for m in tree.values()]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPLAINERS)
def test_applicable_stages_have_numbers_the_attacks_are_na(runs, name):
    path = runs["paths"][name]
    e = read_entry(path)  # schema-valid
    assert e["explainer"]["name"] == name
    # the attacks: not applicable, with the reason, and nothing of theirs in the entry
    assert set(e["not_applicable"]) == ATTACKS
    for stage, reason in e["not_applicable"].items():
        assert f"explainer {name!r} is evaluation-only" in reason
        assert "differentiates through its map" in reason
    m = e["metrics"]
    assert not {"expl_start", "expl_end", "class_changed", "manipulation_loss",
                "adv_insertion"} & set(m)
    assert "not_converged" not in e["flags"]
    assert not ATTACKS & set(e["timing"]) and not ATTACKS & set(e["protocol"]["parameters"])
    assert not any(k.split("/")[0] in ATTACKS for k in read_examples(path, e))
    # every other stage: numbers in their ranges
    assert 50 <= m["clean_acc"]["value"] <= 100 and 0 <= m["pgd_acc"]["value"] <= 100
    assert e["flags"]["degenerate"] is False
    assert 0 <= m["insertion"]["value"] <= 100
    lo, hi = m["insertion"]["ci"]
    assert 0 <= lo <= m["insertion"]["value"] <= hi <= 100
    assert set(m["rps"]) == {"cosine", "pcc", "ssim"}
    for sim in ("cosine", "pcc", "ssim"):
        assert set(m["rps"][sim]) == {"4/255", "8/255", "16/255"}
        assert all(-1 <= v <= 1 for v in _values(m["rps"][sim])), sim
    assert all(0 < v <= 1 for v in _values(m["rps"]["cosine"]))  # |maps| are non-negative
    assert set(m["retrieval"]) == {"relex_adv_mask", "relex_clean_mask", "explainer_adv_mask",
                                   "explainer_clean_mask"}
    assert all(0 <= v <= 1 for per in m["retrieval"].values() for v in _values(per))
    land = m["landscape"]
    assert len(land["gammas"]) == len(land["explanation"]) == len(land["cross_entropy"]) == 5
    assert land["explanation"][0] > 0 and all(v > 0 for v in land["cross_entropy"])
    # the smoke profile's short training is not the reference recipe
    assert e["defense"]["reference"] is False
    assert e["defense"]["recipe_diff"] == {"epochs": {"value": 1, "reference": 25}}


@pytest.mark.slow
def test_gradcam_landscape_counts_pairs_whose_map_is_all_zero(runs):
    """Grad-CAM's ReLU gives all-zero maps, whose sum-normalised map (and L_e) is undefined:
    each gamma's mean leaves those pairs out and the entry counts them."""
    land = read_entry(runs["paths"]["gradcam"])["metrics"]["landscape"]
    undefined = land.get("explanation_undefined_pairs", [0] * len(land["gammas"]))
    assert len(undefined) == len(land["gammas"])
    assert all(0 <= k <= 20 for k in undefined)  # 20 sampled pairs on smoke
    assert all((v is None) == (k == 20) for v, k in zip(land["explanation"], undefined))


@pytest.mark.slow
def test_the_leaderboard_shows_na_and_the_reason(runs):
    md = render_markdown(load_entries(runs["results"]))
    for name in EXPLAINERS:
        block = md.split(f"/ {name} / profile smoke")[1].split("###")[0]
        row = next(ln for ln in block.splitlines() if ln.startswith("| normal"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == "normal \u2020"  # not the reference recipe
        assert cells[4:7] == ["n/a", "n/a", "n/a"]  # Expl@start, Expl@end, loss fall
        assert cells[9] == "n/a"  # Adv-Insertion
        assert all(c not in ("n/a", "\u2013") for c in cells[2:4] + cells[7:9] + cells[10:11])
        assert (f"n/a = not applicable: manipulation (columns Expl@start, Expl@end, Loss fall "
                f"2nd half): explainer '{name}' is evaluation-only") in block
        assert "n/a = not applicable: adv_insertion (columns Adv-Ins.)" in block
        assert "\u2020 recipe differs from the reference: epochs=1 (reference 25)." in block


@pytest.mark.slow
def test_the_command_summary_says_na_and_why(runs, capsys, monkeypatch):
    monkeypatch.setenv("XRBENCH_CACHE", str(runs["root"] / "cache"))
    capsys.readouterr()
    assert _evaluate("lrp", runs["results"]) == 0  # the same run again: all cached
    out = capsys.readouterr().out
    expl_end = next(ln for ln in out.splitlines() if ln.startswith("Expl@end"))
    assert expl_end.split()[2] == "n/a"
    assert ("note: n/a: manipulation not applicable: explainer 'lrp' is evaluation-only "
            "(not differentiable)") in out
    assert "note: not a reference row: recipe differs from the reference: epochs=1" in out
    assert "unchanged (same run)" in out


@pytest.mark.slow
def test_two_evaluation_only_entries_compare_on_what_they_hold(runs):
    rows = api.compare(runs["paths"]["deeplift"], runs["paths"]["lrp"], n_resamples=200)
    names = {r.metric for r in rows}
    assert "insertion" in names and "clean_acc" in names
    assert not any(n.startswith(("expl_", "class_changed", "adv_insertion")) for n in names)


# --- the contract itself (fast) -------------------------------------------------------------

def test_only_the_attacks_differentiate_through_the_map():
    assert {s.name for s in STAGES if s.differentiates} == ATTACKS
    ctx = SimpleNamespace(explainer=get_explainer("lrp"))
    for stage in STAGES:
        reason = stage.applicable(ctx)  # type: ignore[arg-type]
        assert (reason is not None) == (stage.name in ATTACKS), stage.name
    differentiable = SimpleNamespace(explainer=get_explainer("grad_x_input"))
    assert all(s.applicable(differentiable) is None for s in STAGES)  # type: ignore[arg-type]


def test_run_stages_skips_a_stage_that_is_not_applicable_and_records_why():
    class Never(Stage):
        name, version = "never", 1

        def applicable(self, ctx):
            return "needs something this run lacks"

        def params(self, ctx):
            raise AssertionError("a stage that is not applicable is not asked anything")

    done = run_stages(SimpleNamespace(), [Never()])  # type: ignore[arg-type]
    assert done.not_applicable == {"never": "needs something this run lacks"}
    assert done.outputs == {} and done.metrics == {} and done.params == {}
