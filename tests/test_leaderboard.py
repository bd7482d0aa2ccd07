"""Result entries (schema, read/write, layout) and markdown leaderboards, PROTOCOL.md 8."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from xrbench.errors import XRBenchError
from xrbench.leaderboard.render import MISSING, group_key, render_markdown
from xrbench.leaderboard.schema import (entry_path, load_entries, load_schema, read_entry,
                                        safe_component, validate_entry, write_entry)


def _m(value: float | None, lo: float | None = None, hi: float | None = None, n: int = 50,
       **extra: Any) -> dict[str, Any]:
    ci = None if lo is None else [lo, hi]
    return {"value": value, "ci": ci, "n": n, **extra}


def make_entry(defense: str = "sep_neg", seed: int = 0, expl_end: float = 6.5e-5,
               **over: Any) -> dict[str, Any]:
    """A complete, valid schema-v1 entry (digits / convnet / grad_x_input / quick)."""
    entry: dict[str, Any] = {
        "schema_version": 1,
        "protocol": {"version": 1, "profile": "quick",
                     "parameters": {"manipulation_iterations": 300, "manipulation_lr": 0.001,
                                    "pairs": 2450, "rps_eps": ["4/255", "8/255", "16/255"],
                                    "linf_budget": None, "optimizer": "adam"}},
        "xrbench": {"version": "0.1.0", "git_commit": "abc1234def"},
        "date": "2026-11-25T12:00:00+00:00",
        "dataset": {"name": "digits", "channels": 1, "size": 8, "num_classes": 10,
                    "mean": [0.3056], "std": [0.3761], "eps_pgd": 0.3,
                    "retrieval_eps": [0.1, 0.2, 0.3]},
        "subset": {"manifest_sha256": "a" * 64, "n_images": 50, "n_pairs": 2450},
        "model": {"name": "convnet", "parameters": 112970, "beta": 3.0,
                  "activation": "softplus"},
        "defense": {"name": defense,
                    "recipe": {"epochs": 25, "batch_size": 64, "lr": 0.001, "lambda_": -1.0},
                    "recipe_hash": "0123456789ab", "source": "xrbench"},
        "checkpoint": {"sha256": "b" * 64, "origin": "trained"},
        "explainer": {"name": "grad_x_input"},
        "seed": seed,
        "metrics": {
            "clean_acc": _m(99.1, 98.5, 99.6, n=540),
            "pgd_acc": _m(12.3, 10.0, 14.0, n=540),
            "expl_start": _m(1.2e-4, 1.1e-4, 1.3e-4, n=2450, median=1.1e-4),
            "expl_end": _m(expl_end, expl_end * 0.9, expl_end * 1.1, n=2450,
                           median=expl_end),
            "class_changed": _m(0.02, 0.01, 0.03, n=2450),
            "manipulation_loss": {"at_10": 1.0, "at_50": 0.5, "at_100": 0.4},
            "rps": {sim: {e: _m(0.9, 0.85, 0.95) for e in ("4/255", "8/255", "16/255")}
                    for sim in ("cosine", "pcc", "ssim")},
            "insertion": _m(55.0, 50.0, 60.0),
            "adv_insertion": _m(40.0, 35.0, 45.0),
            "retrieval": {k: {"0.1": _m(0.9, 0.8, 1.0), "0.2": _m(0.8, 0.7, 0.9),
                              "0.3": _m(0.5, 0.4, 0.6)}
                          for k in ("relex_adv_mask", "relex_clean_mask",
                                    "explainer_adv_mask", "explainer_clean_mask")},
            "landscape": {"gammas": [0.0, 0.1, 0.2], "explanation": [1e-5, 2e-5, 4e-5],
                          "cross_entropy": [0.01, 0.02, None]},
        },
        "flags": {"not_converged": False, "degenerate": False},
        "timing": {"train": 12.3, "subset": 0.1, "accuracy": 2.0, "manipulation": 100.0},
        "environment": {"torch": "2.14.1", "device": "cpu", "threads": 2, "python": "3.11.7"},
    }
    entry.update(over)
    return entry


def _rejects(entry: dict[str, Any]) -> str:
    with pytest.raises(XRBenchError) as info:
        validate_entry(entry)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_schema_is_valid_draft_2020_12_and_example_validates() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"] == {"enum": [1, 2, 3]}  # 1 and 2 still read
    validate_entry(make_entry())
    # null where a metric could not be computed; extra (future) metrics and card fields pass
    e = make_entry()
    e["metrics"]["class_changed"] = _m(None, n=0)
    e["metrics"]["future_metric"] = {"value": 3.0}
    e["dataset"]["splits"] = {"train": 1257}
    validate_entry(e)


def test_round_trip_write_read(tmp_path: Path) -> None:
    entry = make_entry()
    original = copy.deepcopy(entry)
    done = write_entry(entry_path(tmp_path, entry), entry)
    path = done.path
    assert path.is_file() and done.written
    assert read_entry(path) == original
    assert entry == original  # not mutated
    assert load_entries(tmp_path) == [original]
    # identical content again: fine, no --force needed, nothing rewritten
    again = write_entry(path, copy.deepcopy(entry))
    assert again.path == path and not again.written
    # the same run on another day, taking longer: the existing entry stays
    later = make_entry(date="2026-11-26T08:00:00+00:00", timing={"total": 99.0})
    kept = write_entry(path, later)
    assert not kept.written and kept.entry == original and read_entry(path) == original


def test_per_example_file_beside_the_entry(tmp_path: Path) -> None:
    import numpy as np

    from xrbench.leaderboard.examples import examples_path, read_examples

    arrays = {"manipulation/expl_end": np.array([1.0, 2.0, 3.0]),
              "accuracy/pgd_correct": np.array([True, False])}
    done = write_entry(tmp_path / "e.json", make_entry(), examples=arrays)
    side = examples_path(done.path)
    assert side.name == "e.examples.npz" and side.is_file()
    assert done.entry["examples"]["file"] == side.name
    back = read_examples(done.path, read_entry(done.path))
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and (back[k] == v).all()
    # same arrays, same bytes: a rerun of the same run leaves both files alone
    assert not write_entry(done.path, make_entry(), examples=arrays).written
    # a changed per-example file is caught by its sha256, and the entry is rewritten
    side.write_bytes(side.read_bytes()[:-1] + b"x")
    with pytest.raises(XRBenchError, match="does not match"):
        read_examples(done.path, read_entry(done.path))
    assert write_entry(done.path, make_entry(), examples=arrays).written
    read_examples(done.path, read_entry(done.path))


@pytest.mark.parametrize("mutate, path, what", [
    (lambda e: e["metrics"]["clean_acc"].update(value="high"),
     "entry.metrics.clean_acc.value", "'high' is not of type 'number'"),
    (lambda e: e["metrics"].pop("expl_end"),
     "entry.metrics", "'expl_end' is a required property"),
    (lambda e: e["protocol"].update(profile="fast"),
     "entry.protocol.profile", "'fast' is not one of"),
    (lambda e: e["metrics"]["pgd_acc"].update(ci=["10", 14.0]),
     "entry.metrics.pgd_acc.ci[0]", "'10' is not of type 'number'"),
    (lambda e: e["metrics"]["class_changed"].update(value=2.0),
     "entry.metrics.class_changed.value", "greater than the maximum of 1"),
    (lambda e: e["metrics"]["rps"]["cosine"]["8/255"].update(vale=0.3),
     "entry.metrics.rps.cosine.8/255", "'vale' was unexpected"),
    (lambda e: e.update(seed="0"), "entry.seed", "'0' is not of type 'integer'"),
    (lambda e: e["checkpoint"].update(sha256="xyz"), "entry.checkpoint.sha256", "match"),
    (lambda e: e.update(metrcs={}), "entry", "'metrcs' was unexpected"),
])
def test_invalid_entries_are_rejected_naming_the_path(mutate: Any, path: str,
                                                      what: str) -> None:
    e = make_entry()
    mutate(e)
    msg = _rejects(e)
    assert msg.startswith(path + ": "), msg
    assert what in msg


def test_semantic_checks() -> None:
    e = make_entry()
    e["metrics"]["expl_start"]["value"] = float("nan")
    msg = _rejects(e)
    assert msg.startswith("entry.metrics.expl_start.value: nan") and "null" in msg
    e = make_entry()
    e["metrics"]["pgd_acc"]["ci"] = [14.0, 10.0]
    assert _rejects(e).startswith("entry.metrics.pgd_acc.ci: interval [14.0, 10.0] has lo > hi")
    e = make_entry()
    e["metrics"]["landscape"]["cross_entropy"] = [0.1]
    assert _rejects(e) == "entry.metrics.landscape.cross_entropy: has 1 values for 3 gammas"
    assert _rejects(make_entry(date="2026-13-45T12:00:00Z")).startswith("entry.date:")


def test_invalid_file_and_malformed_json_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "digits" / "bad.json"
    bad.parent.mkdir()
    bad.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(XRBenchError, match=r"malformed JSON in .*bad\.json"):
        read_entry(bad)
    with pytest.raises(XRBenchError, match=r"bad\.json"):
        load_entries(tmp_path)
    wrong = tmp_path / "wrong.json"
    e = make_entry()
    e["metrics"]["clean_acc"]["value"] = "99.1"
    wrong.write_text(json.dumps(e), encoding="utf-8")
    with pytest.raises(XRBenchError) as info:
        read_entry(wrong)
    assert str(wrong) in str(info.value)
    assert "entry.metrics.clean_acc.value: '99.1' is not of type 'number'" in str(info.value)
    with pytest.raises(XRBenchError, match="not found"):
        load_entries(tmp_path / "nowhere")


def test_write_refuses_to_overwrite_a_different_entry(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    write_entry(path, make_entry(expl_end=1e-5))
    with pytest.raises(XRBenchError, match="--force"):
        write_entry(path, make_entry(expl_end=2e-5))
    assert read_entry(path)["metrics"]["expl_end"]["value"] == 1e-5
    write_entry(path, make_entry(expl_end=2e-5), overwrite=True)
    assert read_entry(path)["metrics"]["expl_end"]["value"] == 2e-5
    # an invalid entry is never written
    bad = make_entry(seed=-1)
    with pytest.raises(XRBenchError, match="entry.seed"):
        write_entry(tmp_path / "new.json", bad)
    assert not (tmp_path / "new.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json"]  # no temp files left


def test_entry_path_layout(tmp_path: Path) -> None:
    assert entry_path(tmp_path, make_entry(seed=3)) == (
        tmp_path / "digits" / "convnet" / "grad_x_input" / "quick" / "sep_neg-s3.json")
    e = make_entry(defense="a|b")
    e["dataset"]["name"] = "imagefolder:/x/y"
    e["model"]["name"] = "timm:resnet18"
    p = entry_path(tmp_path, e)
    rel = p.relative_to(tmp_path).parts
    assert len(rel) == 5
    assert rel[0].startswith("imagefolder_x_y-") and rel[1].startswith("timm_resnet18-")
    assert rel[4].startswith("a_b-") and rel[4].endswith("-s0.json")
    assert all("/" not in part and ":" not in part and "|" not in part for part in rel)
    # distinct names never collide, sanitising is deterministic
    assert safe_component("imagefolder:/x/y") != safe_component("imagefolder:/x_y")
    assert safe_component("timm:resnet18") == safe_component("timm:resnet18")
    assert safe_component("..") not in ("..", ".", "")


def _row(md: str, defense: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {defense} "))
    cells = [c.strip() for c in line.replace("\\|", "\x00").strip().strip("|").split("|")]
    return [c.replace("\x00", "\\|") for c in cells]


def test_render_markdown_groups_sorts_and_formats() -> None:
    a = make_entry("mat", expl_end=3.0e-5)
    b = make_entry("sep_neg", expl_end=6.5718e-5)
    c = make_entry("a|b", expl_end=1.5e-5)
    c["metrics"].pop("insertion")
    c["metrics"]["pgd_acc"]["value"] = None
    c["flags"]["degenerate"] = True
    other = make_entry("normal")
    other["model"]["name"] = "lenet"
    assert group_key(a) == ("digits", "convnet", "grad_x_input", "quick", 1)
    assert group_key(other) == ("digits", "lenet", "grad_x_input", "quick", 1)

    md = render_markdown([b, other, a, c])
    assert md.count("| defense ") == 2  # two tables, one per group
    headings = [ln for ln in md.splitlines() if ln.startswith("#")]
    assert headings == [
        "### digits / convnet / grad_x_input / profile quick / protocol v1",
        "### digits / lenet / grad_x_input / profile quick / protocol v1",
    ]
    first = md.split(headings[1])[0]
    # rows by Expl@end ascending; the pipe in "a|b" is escaped
    order = [ln.split("|")[1].strip() for ln in first.splitlines()
             if ln.startswith("| ") and "defense" not in ln]
    assert order == ["a\\", "mat", "sep_neg"]
    assert "| a\\|b " in first
    assert "sorted by Expl@end ascending" in first

    # loss fall over the 2nd half from a v1 entry's at_50 / at_100: (0.5 - 0.4) / 0.5
    assert _row(md, "sep_neg") == ["sep_neg", "0", "99.10", "12.30", "1200.000", "657.180",
                                   "20.0", "0.900", "55.00", "40.00", "80.0", ""]
    row_c = _row(md, "a\\|b")
    assert row_c[0] == "a\\|b"
    assert row_c[3] == MISSING  # PGD acc null
    assert row_c[5] == "150.000"  # 1.5e-5 x 1e7
    assert row_c[8] == MISSING  # insertion absent
    assert row_c[11] == "degenerate"
    assert "middle eps (0.2)" in first

    assert render_markdown([]) == "_No entries._\n"
    # pure: same input, same text; entries untouched
    assert render_markdown([a, b, c, other]) == md


def test_shipped_entries_are_valid_and_where_their_fields_say():
    """Every entry published in leaderboard/results validates, lives at its own entry_path,
    and the paper-profile entry covers the whole subset (22,350 pairs)."""
    import xrbench.leaderboard as lb

    root = Path(lb.__file__).parent / "results"
    paths = sorted(root.rglob("*.json"))
    assert paths, "no shipped entries found"
    for p in paths:
        e = read_entry(p)  # schema + semantic checks
        assert entry_path(root, e) == p
        n_pairs = e["subset"]["n_images"] * (e["subset"]["n_images"] - 1)
        assert e["subset"]["n_pairs"] == n_pairs == e["metrics"]["expl_end"]["n"]
    profiles = {read_entry(p)["protocol"]["profile"] for p in paths}
    assert {"quick", "paper"} <= profiles
    assert any(read_entry(p)["subset"]["n_pairs"] == 22350 for p in paths)


def test_html_and_pipes_in_every_string_field_stay_text(tmp_path: Path) -> None:
    """A markdown viewer renders inline HTML: a defense (or dataset, model, explainer) named
    <script>... must come out as text, and a pipe must not split a table cell."""
    evil = "<script>alert(1)</script>|x&y"

    def poison(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: (evil if isinstance(v, str) and k == "name" else poison(v))
                    for k, v in obj.items()}
        return obj

    entry = poison(make_entry())
    entry["protocol"]["profile"] = "quick"  # an enum in the schema; its name is not free text
    entry["flags"] = {"not_converged": True, "degenerate": False, evil: True}
    md = render_markdown([entry])
    assert "<script>" not in md and "</script>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\|x&amp;y" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header_cells = table[0].count(" | ")
    assert all(ln.replace("\\|", "").count(" | ") == header_cells for ln in table)


# --- schema version 2: not_applicable, reference recipes, provenance, the loss fall ----------

XRBENCH_DIST = {"source": "xrbench", "distribution": {"name": "xrbench", "version": "0.1.0"}}
NA_REASON = ("explainer 'lrp' is evaluation-only (not differentiable); the targeted "
             "manipulation attack (PROTOCOL 5.2) differentiates through its map")


def make_entry_v2(defense: str = "sep_neg", seed: int = 0, expl_end: float = 6.5e-5,
                  not_converged: bool = False, **over: Any) -> dict[str, Any]:
    """A complete, valid schema-v2 entry: :func:`make_entry` plus the version 2 fields (a
    reference recipe, built-in components, every stage applicable, the loss fall)."""
    e = make_entry(defense, seed, expl_end, schema_version=2)
    e["defense"].update(reference=True, distribution=XRBENCH_DIST["distribution"])
    e["model"].update(copy.deepcopy(XRBENCH_DIST))
    e["explainer"].update(copy.deepcopy(XRBENCH_DIST))
    e["metrics"]["manipulation_loss"].update(second_half_fall=0.2, tolerance=0.05)
    e["flags"]["not_converged"] = not_converged
    e["not_applicable"] = {}
    e.update(over)
    return e


def evaluation_only(e: dict[str, Any]) -> dict[str, Any]:
    """``e`` as an evaluation-only explainer leaves it: no manipulation, no Adv-Insertion."""
    e = copy.deepcopy(e)
    e["explainer"]["name"] = "lrp"
    for key in ("expl_start", "expl_end", "class_changed", "manipulation_loss",
                "adv_insertion"):
        del e["metrics"][key]
    del e["flags"]["not_converged"]
    e["not_applicable"] = {"manipulation": NA_REASON,
                           "adv_insertion": NA_REASON.replace(
                               "targeted manipulation attack (PROTOCOL 5.2)",
                               "Adv-Insertion frame attack (PROTOCOL 5.4)"),
                           "gallery": NA_REASON}  # the gallery re-runs the manipulation
    return e


def not_reference(e: dict[str, Any], **diff: tuple[Any, Any]) -> dict[str, Any]:
    e = copy.deepcopy(e)
    e["defense"]["reference"] = False
    e["defense"]["recipe_diff"] = {k: {"value": v, "reference": r} for k, (v, r) in diff.items()}
    return e


def test_schema_v2_entries_validate_and_need_their_fields() -> None:
    validate_entry(make_entry_v2())
    validate_entry(evaluation_only(make_entry_v2()))
    validate_entry(not_reference(make_entry_v2(), epochs=(1, 25)))
    user = make_entry_v2()
    user["defense"].update(reference=False, reference_note="user-supplied weights")
    validate_entry(user)
    validate_entry(make_entry())  # version 1 entries still read

    def without(*path: str) -> dict[str, Any]:
        e = make_entry_v2()
        node = e
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        return e

    assert "'not_applicable' is a required property" in _rejects(without("not_applicable"))
    assert "'reference' is a required property" in _rejects(without("defense", "reference"))
    assert "'distribution' is a required property" in _rejects(without("model", "distribution"))
    assert "'source' is a required property" in _rejects(without("explainer", "source"))
    assert "second_half_fall" in _rejects(
        without("metrics", "manipulation_loss", "second_half_fall"))
    assert "'expl_end' is a required property" in _rejects(without("metrics", "expl_end"))
    assert "'not_converged' is a required property" in _rejects(without("flags", "not_converged"))
    # reference false says why: the fields that differ, or a note
    bare = make_entry_v2()
    bare["defense"]["reference"] = False
    assert _rejects(bare).startswith("entry.defense:")
    bad = make_entry_v2()
    bad["model"]["source"] = "somewhere"
    assert _rejects(bad).startswith("entry.model.source:")


def test_a_stage_that_did_not_run_has_no_metrics() -> None:
    e = evaluation_only(make_entry_v2())
    e["metrics"]["expl_end"] = _m(1e-5, n=10)  # a number for a stage that did not run
    assert _rejects(e).startswith("entry.metrics:")
    e = evaluation_only(make_entry_v2())
    e["metrics"]["adv_insertion"] = _m(40.0)
    assert _rejects(e).startswith("entry.metrics:")
    e = evaluation_only(make_entry_v2())
    e["flags"]["not_converged"] = False  # no flag about an attack that never ran
    assert _rejects(e).startswith("entry.flags:")
    e = evaluation_only(make_entry_v2())
    e["not_applicable"]["manipulation"] = ""  # a reason is a sentence
    assert _rejects(e).startswith("entry.not_applicable.manipulation:")


def _notes(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln and not ln.startswith(("|", "#"))]


def test_render_shows_na_with_its_reason_and_marks_non_reference_rows() -> None:
    ref = evaluation_only(make_entry_v2("mat", expl_end=3e-5))
    short = not_reference(evaluation_only(make_entry_v2("sep_neg")), epochs=(1, 25))
    md = render_markdown([short, ref])
    assert md.splitlines()[0] == "### digits / convnet / lrp / profile quick / protocol v1"
    assert _row(md, "mat") == ["mat", "0", "99.10", "12.30", "n/a", "n/a", "n/a", "0.900",
                               "55.00", "n/a", "80.0", ""]
    assert _row(md, "sep_neg")[0] == "sep_neg \u2020"
    assert _row(md, "sep_neg")[4:7] == ["n/a", "n/a", "n/a"]
    notes = _notes(md)
    assert ("n/a = not applicable: manipulation (columns Expl@start, Expl@end, Loss fall 2nd "
            f"half): {NA_REASON}.") in notes
    assert any(n.startswith("n/a = not applicable: adv_insertion (columns Adv-Ins.): ")
               for n in notes)
    assert "\u2020 recipe differs from the reference: epochs=1 (reference 25)." in notes
    assert not any("gallery" in n for n in notes)  # behind no column: no note
    assert not any(n.startswith("Every row is flagged") for n in notes)
    # two different non-reference recipes in one table: numbered marks, one note each
    other = not_reference(make_entry_v2("normal"), epochs=(3, 25), lr=(0.01, 0.001))
    md = render_markdown([not_reference(make_entry_v2("mat"), epochs=(1, 25)), other])
    assert _row(md, "mat")[0] == "mat \u20201" and _row(md, "normal")[0] == "normal \u20202"
    assert ("\u20202 recipe differs from the reference: epochs=3 (reference 25), lr=0.01 "
            "(reference 0.001).") in _notes(md)
    user = make_entry_v2("user")
    user["defense"].update(reference=False, reference_note="user-supplied weights; recipe unknown")
    assert ("\u2020 not the reference recipe: user-supplied weights; recipe unknown."
            in _notes(render_markdown([user])))
    # version 1 entries do not say: no mark
    assert _row(render_markdown([make_entry("mat")]), "mat")[0] == "mat"


def test_a_table_whose_rows_all_carry_not_converged_says_so_once() -> None:
    a = make_entry_v2("mat", expl_end=3e-5, not_converged=True)
    b = make_entry_v2("sep_neg", not_converged=True)
    b["metrics"]["manipulation_loss"]["second_half_fall"] = 0.0834
    b["flags"]["degenerate"] = True
    md = render_markdown([a, b])
    assert _row(md, "mat")[6] == "20.0" and _row(md, "sep_neg")[6] == "8.3"
    assert _row(md, "mat")[11] == "" and _row(md, "sep_neg")[11] == "degenerate"
    sentence = ("Every row is flagged not_converged: the manipulation's mean loss still fell by "
                "more than 5% over the second half of its iterations (column Loss fall 2nd "
                "half); Expl@end is the value at the protocol's fixed attack budget.")
    assert _notes(md).count(sentence) == 1
    # one row without the flag: each flagged row says it, no sentence
    md = render_markdown([a, make_entry_v2("sep_neg", not_converged=False)])
    assert _row(md, "mat")[11] == "not_converged" and _row(md, "sep_neg")[11] == ""
    assert sentence not in _notes(md)


def test_reasons_and_recipe_values_stay_text_in_markdown() -> None:
    evil = "<script>alert(1)</script>|x&y"
    e = not_reference(evaluation_only(make_entry_v2("mat")), base=(evil, "mat"))
    e["not_applicable"]["manipulation"] = evil
    md = render_markdown([e])
    assert "<script>" not in md and "</script>" not in md
    assert ("\u2020 recipe differs from the reference: base=&lt;script&gt;alert(1)&lt;/script&gt;"
            "\\|x&amp;y (reference mat).") in _notes(md)
    assert any(n.endswith("&lt;script&gt;alert(1)&lt;/script&gt;\\|x&amp;y.") and "n/a" in n
               for n in _notes(md))
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert all(ln.replace("\\|", "").count(" | ") == table[0].count(" | ") for ln in table)


def test_intervals_view_prints_each_metric_with_its_interval() -> None:
    from xrbench.leaderboard.render import interval_cell, render_intervals

    assert interval_cell({"value": 1.5e-5, "ci": [1e-5, 2e-5]}, 1e7, 0) == "150 [100, 200]"
    assert interval_cell({"value": 12.3456, "ci": None}, 1.0, 2) == "12.35"
    assert interval_cell(None, 1.0, 2) == "\u2013"
    md = render_intervals([make_entry("mat", expl_end=5e-5), make_entry("sep_neg")])
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "defense"
    mat = [c.strip() for c in lines[1].split("|")[1:-1]]  # lower Expl@end first
    assert mat == ["mat", "0", "99.10 [98.50, 99.60]", "12.30 [10.00, 14.00]",
                   "1200 [1100, 1300]", "500 [450, 550]", "55.00 [50.00, 60.00]"]
    assert lines[2].split("|")[1].strip() == "sep_neg"
    na = make_entry("normal")
    na["not_applicable"] = {"manipulation": "evaluation-only explainer"}
    assert "| n/a " in render_intervals([na])


def test_same_run_ignores_where_the_dataset_lives_now() -> None:
    from xrbench.leaderboard.schema import same_run

    a, b = make_entry(), make_entry()
    a["dataset"]["source"] = "torchvision ImageFolder at /data/photos"
    b["dataset"]["source"] = "torchvision ImageFolder at /mnt/moved/photos"
    assert same_run(a, b)  # a moved imagefolder is the same dataset (named by its files)
    b["dataset"]["size"] = 16
    assert not same_run(a, b)
