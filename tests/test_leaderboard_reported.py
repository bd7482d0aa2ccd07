"""Reported entries (schema version 3): numbers copied from the SEP paper's Table 2 and Joo et
al. 2023's Table 1, shipped as data beside the measured ones (PROTOCOL.md 9)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from xrbench.errors import XRBenchError
from xrbench.leaderboard.schema import (is_reported, read_entry, reported_dir, same_run,
                                        scan_entries, validate_entry)


def _shipped() -> dict[tuple[str, str, str, str], dict[str, Any]]:
    out = {}
    for loaded in scan_entries([reported_dir()]).loaded:
        e = loaded.entry
        out[(e["reported"]["label"], e["dataset"]["name"], e["model"]["name"],
             e["defense"]["name"])] = e
    return out


def test_every_shipped_reported_file_validates_and_is_flagged() -> None:
    root = reported_dir()
    paths = sorted(root.rglob("*.json"))
    # Table 2: 3 datasets x 2 models x 4 methods; Table 15: 2 x 2 x 4; Joo: 6 + 4 + 4 rows
    assert len(paths) == 24 + 16 + 14
    for p in paths:
        e = read_entry(p)
        assert is_reported(e) and e["schema_version"] == 3
        assert e["protocol"] == {"version": None, "profile": "paper"}
        assert not {"checkpoint", "subset", "environment", "timing", "date"} & set(e)
        # the file sits at <source>/<dataset>/<model>/<explainer>/<profile>/<defense>.json
        assert p.relative_to(root).parts[1:] == (
            e["dataset"]["name"], e["model"]["name"], e["explainer"]["name"], "paper",
            f"{e['defense']['name']}.json")


def test_reported_values_are_the_printed_numbers_in_entry_units() -> None:
    rows = _shipped()
    sep = "SEP paper, Table 2"
    # MNIST ConvNet sep_neg: 806.204 / 657.180 / 98.97 / 90.34 (L_e in 1e-7 as printed)
    e = rows[(sep, "mnist", "convnet", "sep_neg")]
    assert e["metrics"]["expl_start"]["value"] == pytest.approx(806.204e-7, rel=1e-12)
    assert e["metrics"]["expl_end"]["value"] == pytest.approx(657.180e-7, rel=1e-12)
    assert e["metrics"]["expl_end"]["as_printed"] == "657.180"
    assert e["metrics"]["clean_acc"]["value"] == 98.97  # percent, as measured entries
    assert e["metrics"]["pgd_acc"]["value"] == 90.34
    assert e["explainer"]["name"] == "grad_x_input"
    e = rows[(sep, "tinyimagenet", "resnet18", "normal")]
    assert e["metrics"]["expl_end"]["value"] == pytest.approx(0.528e-7, rel=1e-12)
    assert e["metrics"]["pgd_acc"]["value"] == 0.0
    assert {k[1] for k in rows if k[0] == sep} == {"mnist", "cifar10", "tinyimagenet"}
    assert sum(k[0] == sep for k in rows) == 24

    t15 = "SEP paper, Table 15"  # guided backprop, PROTOCOL.md 9
    e = rows[(t15, "fashion_mnist", "resnet18", "sep_neg")]  # 4219.351 / 3839.408 / 80.11 / 72.21
    assert [e["metrics"][k]["value"] for k in ("expl_start", "expl_end", "clean_acc",
                                                "pgd_acc")] == [4219.351e-7, 3839.408e-7, 80.11,
                                                                72.21]
    assert e["explainer"]["name"] == "guided_backprop" and e["reported"]["table"] == "Table 15"
    printed_above = {k[1:] for k, v in rows.items() if k[0] == t15
                     and v["metrics"]["pgd_acc"]["value"] > v["metrics"]["clean_acc"]["value"]}
    assert printed_above == {("fashion_mnist", "convnet", "mat"),
                             ("fashion_mnist", "convnet", "sep_neg")}
    assert all("reproduced as printed" in rows[(t15, *k)]["reported"]["note"]
               for k in printed_above)
    e = rows[(t15, "tinyimagenet", "resnet18", "sep_pos")]  # printed "28 68"
    assert e["metrics"]["clean_acc"]["value"] == 28.68 and "28 68" in e["reported"]["note"]
    assert sum(k[0] == t15 for k in rows) == 16

    joo = "Joo et al. 2023, Table 1"
    e = rows[(joo, "cifar10", "resnet18", "l2_cosd")]  # 93.0 / 0.931 / 53.4 / 48.9
    assert e["metrics"]["clean_acc"]["value"] == 93.0
    assert e["metrics"]["rps"]["cosine"]["16/255"]["value"] == 0.931
    assert e["metrics"]["insertion"]["value"] == 53.4  # percent, as measured entries
    assert e["metrics"]["adv_insertion"]["value"] == 48.9
    assert "pgd_acc" not in e["metrics"]  # the paper reports none
    assert e["explainer"]["name"] == "gradient" and e["reported"]["method"] == "ℓ2 + Cosd (ours)"
    e = rows[(joo, "imagenet100", "resnet18", "normal")]  # CE only: 79.0 / 0.790 / 39.8 / 29.8
    assert [e["metrics"]["clean_acc"]["value"], e["metrics"]["rps"]["cosine"]["16/255"]["value"],
            e["metrics"]["insertion"]["value"], e["metrics"]["adv_insertion"]["value"]] == \
        [79.0, 0.790, 39.8, 29.8]
    # methods without an xrbench defense keep their own names and say so
    joo_rows = {k[1:]: v for k, v in rows.items() if k[0] == joo}
    assert len(joo_rows) == 14
    unmatched = {k[2] for k, v in joo_rows.items() if not v["reported"]["xrbench_defense"]}
    assert unmatched == {"atex", "iga", "l2"}
    assert {k[2] for k, v in joo_rows.items() if v["reported"]["xrbench_defense"]} == \
        {"normal", "hessian", "l2_cosd"}
    assert {k[:2] for k in joo_rows if k[2] in ("atex", "iga")} == {("cifar10", "lenet")}


def _one() -> dict[str, Any]:
    return copy.deepcopy(_shipped()[("SEP paper, Table 2", "mnist", "convnet", "mat")])


def _rejects(entry: dict[str, Any]) -> str:
    with pytest.raises(XRBenchError) as info:
        validate_entry(entry)
    return str(info.value)


def test_the_schema_keeps_reported_entries_honest() -> None:
    e = _one()
    validate_entry(e)
    e["metrics"]["pgd_acc"]["value"] = 90.0  # not what was printed (89.92)
    assert "not the printed '89.92'" in _rejects(e)
    e = _one()
    e["metrics"]["expl_end"]["value"] = 298.729  # forgot the 1e-7 unit
    assert _rejects(e).startswith("entry.metrics.expl_end:")
    e = _one()
    e["checkpoint"] = {"sha256": "a" * 64, "origin": "user"}  # a reported row has no weights
    assert "'checkpoint' was unexpected" in _rejects(e)
    e = _one()
    del e["reported"]  # the flag is explicit in version 3: no flag, not reported
    assert "'reported' is a required property" in _rejects(e)
    e = _one()
    e["protocol"]["version"] = 2  # the paper's setup is no xrbench protocol version
    assert _rejects(e).startswith("entry.protocol.version:")
    e = _one()
    e["schema_version"] = 2  # reported entries exist from version 3 on
    assert _rejects(e).startswith("entry.schema_version:")
    e = _one()
    e["metrics"]["pgd_acc"]["as_printed"] = "high"
    assert _rejects(e).startswith("entry.metrics.pgd_acc.as_printed:")


def test_measured_entries_of_every_version_still_validate() -> None:
    from test_leaderboard import make_entry, make_entry_v2

    validate_entry(make_entry())  # version 1
    v2 = make_entry_v2()
    validate_entry(v2)  # version 2: no reported field, measured
    v3 = make_entry_v2(schema_version=3, reported=None)
    validate_entry(v3)
    assert same_run(v2, v3)  # the same run written by the older and the newer code
    del v3["reported"]
    assert "'reported' is a required property" in _rejects(v3)
    v3 = make_entry_v2(schema_version=3, reported=None)
    v3["reported"] = {"label": "x"}  # an object makes it a reported entry: then it must be one
    assert _rejects(v3).startswith("entry")


def test_scan_skips_a_bad_file_and_says_why(tmp_path: Path) -> None:
    import json

    from test_leaderboard import make_entry_v2

    (tmp_path / "a").mkdir()
    good = tmp_path / "a" / "good.json"
    good.write_text(json.dumps(make_entry_v2()), encoding="utf-8")
    (tmp_path / "a" / "broken.json").write_text('{"schema_version": 2,', encoding="utf-8")
    bad = make_entry_v2()
    bad["metrics"]["clean_acc"]["value"] = "high"
    (tmp_path / "a" / "invalid.json").write_text(json.dumps(bad), encoding="utf-8")
    scan = scan_entries([tmp_path / "a", tmp_path])  # overlapping: each file read once
    assert [x.path.name for x in scan.loaded] == ["good.json"]
    assert [x.path.name for x in scan.skipped] == ["broken.json", "invalid.json"]
    assert "malformed JSON" in scan.skipped[0].reason
    assert scan.skipped[1].reason.startswith("entry.metrics.clean_acc.value:")
    with pytest.raises(XRBenchError, match="results folder not found"):
        scan_entries([tmp_path / "nope"])
