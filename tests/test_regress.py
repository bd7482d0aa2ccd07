"""xrbench regress: the judgement of one metric, of one entry and of two folders, on copies
of the project's golden smoke baselines (leaderboard/baselines) with planted changes. Fast:
nothing here trains or scores (tests/test_regress_guard.py does)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrbench.cli import main
from xrbench.errors import XRBenchError
from xrbench.leaderboard import regress as rg
from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.schema import read_entry, write_entry
from xrbench.testing import assert_no_regression

BASELINES = Path(__file__).parents[1] / "leaderboard" / "baselines"
SMOKE = BASELINES / "digits" / "convnet" / "grad_x_input" / "smoke"
DEFENSES = ("normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian")


def _copy(tmp_path: Path, defense: str = "mat", edit=None, arrays_edit=None) -> Path:
    """A copy of one baseline entry (with its per-example file) under tmp_path/current/...,
    its metrics changed by ``edit(entry)`` and its arrays by ``arrays_edit(arrays)``."""
    src = SMOKE / f"{defense}-s0.json"
    entry = read_entry(src)
    arrays = read_examples(src, entry)
    entry = {k: v for k, v in copy.deepcopy(entry).items() if k != "examples"}
    if edit:
        edit(entry)
    if arrays_edit:
        arrays_edit(arrays)
    dest = tmp_path / "current" / f"{defense}-s0.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)  # a same-run entry would keep its old per-example file
    write_entry(dest, entry, overwrite=True, examples=arrays)
    return dest


def _judge(current: Path, mode: str = "scoring", **kw) -> rg.Report:
    base, spread = rg.load_side(BASELINES, split_spread=True)
    cur, _ = rg.load_side(current)
    keys = {rg.entry_key(s.entry) for s in cur}
    base = [s for s in base if rg.entry_key(s.entry) in keys]
    return rg.regress(base, cur, rg.Settings(mode=mode, **kw), spread)


def _row(report: rg.Report, metric: str) -> rg.MetricCheck:
    (entry,) = report.entries
    return next(m for m in entry.metrics if m.metric == metric)


def test_the_baselines_hold_all_seven_defenses_with_checkpoints_and_spread():
    base, spread = rg.load_side(BASELINES, split_spread=True)
    assert sorted(s.entry["defense"]["name"] for s in base) == sorted(DEFENSES)
    for s in base:
        e = s.entry
        assert (e["protocol"]["profile"], e["dataset"]["name"], e["seed"]) == ("smoke",
                                                                               "digits", 0)
        assert s.arrays  # per-example file present and sha256-checked
        ckpt = rg.checkpoint_beside(s.path)
        from xrbench.utils import sha256_file
        assert sha256_file(ckpt) == e["checkpoint"]["sha256"]
    # the spread: seven more seeds of each defense, entries only
    seeds = sorted((s.entry["defense"]["name"], s.entry["seed"]) for s in spread)
    assert seeds == sorted((d, k) for d in DEFENSES for k in range(1, 8))
    assert all(s.arrays is None for s in spread)


def test_tolerances_parse():
    assert rg.Tolerance.parse("1e-3") == rg.Tolerance(1e-3, True)
    assert rg.Tolerance.parse("rel:0.5") == rg.Tolerance(0.5, True)
    assert rg.Tolerance.parse("abs:2") == rg.Tolerance(2.0, False)
    assert rg.Tolerance(0.1, True).width(-30.0) == pytest.approx(3.0)
    assert rg.Tolerance(0.1, False).width(-30.0) == pytest.approx(0.1)
    assert rg.parse_metric_tolerances(["a/*=abs:1", "b=2"]) == (
        ("a/*", rg.Tolerance(1.0, False)), ("b", rg.Tolerance(2.0, True)))
    for bad in ("x", "abs:-1", "pct:3", "nan"):
        with pytest.raises(XRBenchError):
            rg.Tolerance.parse(bad)
    with pytest.raises(XRBenchError, match="NAME=TOL"):
        rg.parse_metric_tolerances(["expl_end"])
    with pytest.raises(XRBenchError, match="unknown mode"):
        rg.Settings(mode="fast")


def test_metric_leaves_names_and_declared_directions():
    entry = read_entry(SMOKE / "mat-s0.json")
    leaves = rg.metric_leaves(entry["metrics"])
    for name in ("clean_acc", "pgd_acc", "expl_start", "expl_end", "class_changed",
                 "rps/cosine/8/255", "insertion", "adv_insertion",
                 "retrieval/relex_adv_mask/0.2", "landscape/explanation/0",
                 "manipulation_loss/second_half_fall"):
        assert name in leaves, name
    assert leaves["clean_acc"].value == entry["metrics"]["clean_acc"]["value"]
    assert leaves["expl_end"].ci == tuple(entry["metrics"]["expl_end"]["ci"])
    decl = rg.declarations(entry)
    better = {n: decl[n].better for n in leaves if n in decl}
    # the stages' own column declarations (xrbench.columns), not a second table
    assert better["clean_acc"] == better["pgd_acc"] == better["expl_end"] == "higher"
    assert better["expl_start"] == "" and better["rps/cosine/8/255"] == "higher"


def test_identical_entry_passes_in_both_modes(tmp_path):
    cur = _copy(tmp_path)
    for mode in ("scoring", "training"):
        report = _judge(cur, mode)
        assert not report.failed
        assert {m.verdict for m in report.entries[0].metrics} == {"ok"}


def test_scoring_band_is_relative_1e4_and_any_direction_fails(tmp_path):
    def nudge(factor):
        def edit(e):
            e["metrics"]["expl_end"]["value"] *= factor
        return edit
    assert _row(_judge(_copy(tmp_path, edit=nudge(1 + 5e-5))), "expl_end").verdict == "ok"
    worse = _row(_judge(_copy(tmp_path, edit=nudge(1 - 2e-4))), "expl_end")
    better = _row(_judge(_copy(tmp_path, edit=nudge(1 + 2e-4))), "expl_end")
    assert (worse.verdict, worse.failed) == ("regressed", True)
    assert (better.verdict, better.failed) == ("improved", True)  # same weights: never better
    base = read_entry(SMOKE / "mat-s0.json")["metrics"]["expl_end"]["value"]
    assert worse.lo == pytest.approx(base * (1 - 1e-4)) and worse.hi == pytest.approx(
        base * (1 + 1e-4))
    # a per-metric tolerance widens (or narrows) the band of the metrics it names
    report = _judge(_copy(tmp_path, edit=nudge(1 - 2e-4)),
                    metric_tolerances=rg.parse_metric_tolerances(["expl_*=1e-3"]))
    assert _row(report, "expl_end").verdict == "ok"
    assert _row(report, "expl_end").band_from == "--metric rel:0.001"


def test_scoring_mode_sees_examples_that_moved_under_an_unchanged_mean(tmp_path):
    def swap(arrays):
        a = arrays["accuracy/clean_correct"]
        i, j = int(np.argmax(a)), int(np.argmin(a))  # one correct, one wrong image
        a[i], a[j] = a[j], a[i]
    report = _judge(_copy(tmp_path, arrays_edit=swap))
    row = _row(report, "clean_acc")
    assert row.baseline == row.current  # the same mean ...
    assert row.verdict == "changed" and row.failed  # ... over other images
    assert "2 of 200 examples" in row.detail
    assert report.failed
    # an array behind no metric (Insertion's per-ratio curves) is checked too
    def bend(arrays):
        arrays["insertion/curve"][3, 0] += 0.01
    report = _judge(_copy(tmp_path, arrays_edit=bend))
    row = _row(report, "examples:insertion/curve")
    assert (row.verdict, row.failed) == ("changed", True)
    assert row.detail == "1 of 400 values moved, by up to 0.01"
    assert _row(report, "insertion").verdict == "ok"  # the score itself did not move


def test_per_example_band_scales_with_the_array_not_the_value(tmp_path):
    """Float noise on a value near 0 passes (re-scoring the torch 2.15.0 baselines under
    2.14.1 moved one of the gallery's 256 values by +2.33e-10, which ``rtol x |value|``
    failed); a move beyond rtol x max|array| still fails."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, (4, 1, 8, 8)).astype(np.float32)
    base[0, 0, 0, 0] = 1e-9
    scale = float(base.max())
    noisy = base.astype(np.float64)
    noisy[0, 0, 0, 0] += 2.33e-10
    assert not np.isclose(noisy, base, rtol=1e-4, atol=0.0).all()  # the old per-value rule
    assert rg.array_band(base, 1e-4, 0.0) == pytest.approx(1e-4 * scale)
    assert rg.array_band(np.zeros(3), 1e-4, 0.0) == rg.ARRAY_ATOL_FLOOR
    assert rg.array_band(np.array([np.nan, -2.0]), 1e-4, 0.0) == pytest.approx(2e-4)
    assert rg.array_band(base, 1e-4, 0.5) == 0.5  # atol still widens it
    settings = rg.Settings()
    assert rg.moved_arrays({"gallery/map_adv": base}, {"gallery/map_adv": noisy}, settings) == []
    moved = base.astype(np.float64)
    moved[0, 0, 0, 0] += 3e-4 * scale
    moved[1, 0, 2, 2] = np.nan
    (row,) = rg.moved_arrays({"gallery/map_adv": base}, {"gallery/map_adv": moved}, settings)
    assert (row.metric, row.verdict, row.failed) == ("examples:gallery/map_adv", "changed", True)
    assert row.detail.startswith("2 of 256 values moved")  # NaN never matches a number
    assert row.band_from.startswith(f"+-{1e-4 * scale:.3g}")

    # through a whole entry: a per-pair Expl@end value moved by noise of the array's scale
    def expl_noise(arrays):
        a = arrays["manipulation/expl_end"]
        a.flat[int(np.argmin(np.abs(a)))] += np.float32(5e-6 * float(np.abs(a).max()))
    assert not _judge(_copy(tmp_path, "l2_cosd", arrays_edit=expl_noise)).failed

    def expl_moved(arrays):
        a = arrays["manipulation/expl_end"]
        a.flat[0] += np.float32(1e-3 * float(np.abs(a).max()))
    report = _judge(_copy(tmp_path, "l2_cosd", arrays_edit=expl_moved))
    assert _row(report, "expl_end").failed and "1 of 380 examples" in _row(report,
                                                                              "expl_end").detail


def test_training_band_closed_form():
    leaf = rg.Leaf(50.0, (45.0, 53.0))
    s = rg.Settings(mode="training", k=3)
    # the interval alone: 5 below, 3 above
    assert rg.training_band("m", leaf, (), None, s) == (5.0, 3.0, "CI")
    # seeds 50, 52, 54: sd 2, k = 3 -> 6 on both sides, wider than the interval
    lo, hi, src = rg.training_band("m", leaf, (50.0, 52.0, 54.0), None, s)
    assert (lo, hi) == pytest.approx((6.0, 6.0)) and src == "3 sd of 3 seeds"
    # a count metric never has a band narrower than one example (scale / n)
    ex = rg.ExampleValues(np.array([0.0, 100.0] * 100), 100.0, True)
    lo, hi, src = rg.training_band("m", rg.Leaf(50.0, (50.0, 50.0)), (), ex, s)
    assert (lo, hi, src) == (0.5, 0.5, "one example")
    # no interval and no spread: no band from the data
    assert rg.training_band("m", rg.Leaf(1.0), (), None, s) is None
    # --metric replaces the band
    s2 = rg.Settings(mode="training", metric_tolerances=(("m", rg.Tolerance(0.1)),))
    lo, hi, src = rg.training_band("m", leaf, (50.0, 60.0), None, s2)
    assert (lo, hi, src) == (pytest.approx(5.0), pytest.approx(5.0), "--metric rel:0.1")


@pytest.mark.parametrize("better, value, verdict, failed", [
    ("higher", 40.0, "regressed", True), ("higher", 60.0, "improved", False),
    ("lower", 40.0, "improved", False), ("lower", 60.0, "regressed", True),
    ("", 60.0, "changed", True), ("higher", 52.0, "ok", False)])
def test_training_verdicts_are_direction_aware(better, value, verdict, failed):
    s = rg.Settings(mode="training")
    got = rg.check_metric("m", rg.Leaf(50.0, (45.0, 55.0)), rg.Leaf(value), s,
                          declared=rg.Declared("m", better))
    assert (got.verdict, got.failed) == (verdict, failed)
    strict = rg.Settings(mode="training", fail_on_improvement=True)
    got = rg.check_metric("m", rg.Leaf(50.0, (45.0, 55.0)), rg.Leaf(value), strict,
                          declared=rg.Declared("m", better))
    assert got.failed == (verdict != "ok")


def test_training_mode_uses_the_seed_spread(tmp_path):
    # Expl@end 20% lower: far outside the interval, but is it outside the seeds' spread?
    cur = _copy(tmp_path, "sep_neg",
                edit=lambda e: e["metrics"]["expl_end"].__setitem__(
                    "value", e["metrics"]["expl_end"]["value"] * 0.8))
    row = _row(_judge(cur, "training"), "expl_end")
    spread = [read_entry(p)["metrics"]["expl_end"]["value"]
              for p in sorted((BASELINES / "spread").rglob("sep_neg-s*.json"))]
    base = read_entry(SMOKE / "sep_neg-s0.json")["metrics"]["expl_end"]
    sd = float(np.std([base["value"], *spread], ddof=1))
    width = max(base["value"] - base["ci"][0], rg.DEFAULT_K * sd)
    assert row.lo == pytest.approx(base["value"] - width)
    assert row.band_from == f"{rg.DEFAULT_K:g} sd of 8 seeds"
    assert row.verdict == ("ok" if 0.2 * base["value"] <= width else "regressed")
    # a fall to a fifth is beyond any seed's reach
    cur = _copy(tmp_path, "sep_neg",
                edit=lambda e: e["metrics"]["expl_end"].__setitem__(
                    "value", e["metrics"]["expl_end"]["value"] * 0.2))
    row = _row(_judge(cur, "training"), "expl_end")
    assert (row.verdict, row.failed) == ("regressed", True)


def test_missing_extra_and_not_comparable_entries_fail(tmp_path):
    cur = _copy(tmp_path)
    base, _ = rg.load_side(BASELINES, split_spread=True)
    report = rg.regress(base, rg.load_side(cur)[0], rg.Settings())
    status = {e.key[4]: e.status for e in report.entries}
    assert status["mat"] == "compared" and report.failed
    assert sorted(k for k, v in status.items() if v == "missing") == sorted(
        set(DEFENSES) - {"mat"})
    report = rg.regress([], rg.load_side(cur)[0], rg.Settings())
    assert [e.status for e in report.entries] == ["extra"] and report.failed

    def other_manifest(e):
        e["subset"]["manifest_sha256"] = "0" * 64
    report = _judge(_copy(tmp_path, edit=other_manifest))
    assert report.entries[0].status == "not comparable" and report.failed
    assert "subset manifest differs" in report.entries[0].notes[0]
    assert report.entries[0].metrics == []  # never silently compared

    def other_protocol(e):
        e["protocol"]["version"] = 1
    report = _judge(_copy(tmp_path, edit=other_protocol), "training")
    assert report.entries[0].status == "not comparable"
    assert "protocol version differs" in report.entries[0].notes[0]

    def retrained(e):
        e["checkpoint"]["sha256"] = "f" * 64
    report = _judge(_copy(tmp_path, edit=retrained))
    assert report.entries[0].status == "not comparable"
    assert "--mode training" in report.entries[0].notes[0]
    assert not _judge(_copy(tmp_path, edit=retrained), "training").failed


def test_across_versions_shows_what_a_protocol_version_moved(tmp_path, capsys):
    """Entries of two protocol versions are not comparable, unless --across-versions asks
    what the new version moved: the same checkpoint and subset, every other number ok, the
    moved metric (and only it) fails, and the version change is said."""
    def older(e):
        e["protocol"]["version"] = e["protocol"]["version"] - 1
    base = _copy(tmp_path / "base", edit=older)
    same = _copy(tmp_path)
    assert rg.regress(rg.load_side(base)[0], rg.load_side(same)[0],
                      rg.Settings()).entries[0].status == "not comparable"
    report = rg.regress(rg.load_side(base)[0], rg.load_side(same)[0],
                        rg.Settings(across_versions=True))
    assert report.entries[0].status == "compared" and not report.failed
    assert any("protocol version" in n and "--across-versions" in n
               for n in report.entries[0].notes)

    def ssim_moved(e):
        leaf = e["metrics"]["rps"]["ssim"]["8/255"]
        leaf["value"] += 0.01
    moved = _copy(tmp_path / "moved", edit=ssim_moved)
    code = main(["regress", str(base), str(moved), "--across-versions", "--show", "changed"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith("rps/")]
    assert rows == ["rps/ssim/8/255"], out
    assert main(["regress", str(base), str(moved)]) == 1
    assert "--across-versions" in capsys.readouterr().out


def test_a_missing_metric_fails_and_a_new_one_is_reported(tmp_path):
    def drop(e):
        del e["metrics"]["insertion"]
    report = _judge(_copy(tmp_path, edit=drop))
    assert (_row(report, "insertion").verdict, _row(report, "insertion").failed) == (
        "missing", True)

    def add(e):
        e["metrics"]["new_metric"] = {"value": 1.0, "ci": [0.5, 1.5], "n": 20}
    report = _judge(_copy(tmp_path, edit=add))
    assert (_row(report, "new_metric").verdict, report.failed) == ("new", False)


def test_cli_exit_codes_table_and_json(tmp_path, capsys):
    cur = _copy(tmp_path, edit=lambda e: e["metrics"]["pgd_acc"].__setitem__("value", 99.0))
    code = main(["regress", str(SMOKE / "mat-s0.json"), str(cur)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(l for l in out.splitlines() if l.startswith("pgd_acc "))
    assert "99" in line and "improved FAIL" in line
    assert "failed: mat-s0: pgd_acc improved" in out
    code = main(["regress", str(SMOKE / "mat-s0.json"), str(cur), "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["passed"] is False
    assert data["failures"] == ["mat-s0: pgd_acc improved"]
    row = next(m for m in data["entries"][0]["metrics"] if m["metric"] == "pgd_acc")
    assert row["current"] == 99.0 and row["verdict"] == "improved"
    code = main(["regress", str(SMOKE / "mat-s0.json"), str(_copy(tmp_path))])
    assert code == 0 and "regress (scoring mode): passed" in capsys.readouterr().out
    code = main(["regress", str(SMOKE / "mat-s0.json"), str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("xrbench: error: no such file or folder")
    code = main(["regress", str(SMOKE / "mat-s0.json"), str(cur), "--metric", "pgd_acc"])
    assert code == 2 and "NAME=TOL" in capsys.readouterr().err


def test_update_writes_a_baseline_that_then_passes(tmp_path, capsys):
    cur = _copy(tmp_path)
    shutil.copyfile(rg.checkpoint_beside(SMOKE / "mat-s0.json"), rg.checkpoint_beside(cur))
    new = tmp_path / "baselines"
    assert main(["regress", str(new), str(cur.parent), "--update"]) == 0
    out = capsys.readouterr().out
    written = new / "digits" / "convnet" / "grad_x_input" / "smoke" / "mat-s0.json"
    assert f"added {written}" in out and "reviewed commit" in out
    assert rg.checkpoint_beside(written).read_bytes() == rg.checkpoint_beside(cur).read_bytes()
    assert main(["regress", str(new), str(cur.parent)]) == 0
    capsys.readouterr()
    # a changed value: the comparison is printed, then the baseline takes the new value
    changed = _copy(tmp_path, edit=lambda e: e["metrics"]["clean_acc"].__setitem__("value", 1.0))
    assert main(["regress", str(new), str(changed.parent)]) == 1
    assert main(["regress", str(new), str(changed.parent), "--update"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert read_entry(written)["metrics"]["clean_acc"]["value"] == 1.0
    assert main(["regress", str(new), str(changed.parent)]) == 0
    # a file is not a baseline folder
    code = main(["regress", str(written), str(changed.parent), "--update"])
    assert code == 2 and "needs a baseline folder" in capsys.readouterr().err


def test_assert_no_regression_names_the_metric(tmp_path):
    good = _copy(tmp_path)
    report = assert_no_regression(BASELINES, good, only_current=True)
    assert not report.failed
    bad = _copy(tmp_path, edit=lambda e: e["metrics"]["insertion"].__setitem__("value", 1.0))
    with pytest.raises(AssertionError) as err:
        assert_no_regression(BASELINES, bad, only_current=True)
    assert "insertion" in str(err.value) and "regressed FAIL" in str(err.value)
    with pytest.raises(AssertionError, match="missing"):  # the six other defenses
        assert_no_regression(BASELINES, good)
    assert_no_regression(BASELINES, bad, only_current=True, metrics={"insertion": "abs:100"})


def test_two_baseline_folders_compare_without_their_spread(capsys):
    # the review of a refresh: old baselines against new ones (here: the same folder)
    assert main(["regress", str(BASELINES), str(BASELINES), "--show", "failed"]) == 0
    out = capsys.readouterr().out
    assert "entries: 7 compared, 0 missing, 0 extra" in out
    assert "note: 49 entries under spread/" in out
