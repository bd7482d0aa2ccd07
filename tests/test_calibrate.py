"""``xrbench calibrate`` (PROTOCOL 7): the rule, the record, resuming, and how train and
evaluate find a calibrated lambda (or say how to make one)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from xrbench.calibrate import (CLEAN_POINTS, GRID, PGD_POINTS, calibrate, choose,
                               find_calibration, missing_calibration, passes, record_name,
                               shipped_dir)
from xrbench.cli import main
from xrbench.data import dataset_card
from xrbench.errors import XRBenchError
from xrbench.train import build_recipe
from xrbench.utils import sha256_file, write_json

MAT = {"clean": 90.0, "pgd": 40.0}


def test_the_rule_picks_the_largest_passing_lambda() -> None:
    assert (PGD_POINTS, CLEAN_POINTS) == (3.0, 10.0)
    points = [
        {"lambda": 10.0, "clean": 89.0, "pgd": 40.5},
        {"lambda": 100.0, "clean": 80.0, "pgd": 37.0},    # exactly at both limits: passes
        {"lambda": 1000.0, "clean": 85.0, "pgd": 36.99},  # PGD 3.01 below MAT's: fails
        {"lambda": 3000.0, "clean": 79.9, "pgd": 45.0},   # clean 10.1 below: fails
        {"lambda": 1e5, "clean": None, "pgd": None, "status": "diverged"},
    ]
    assert [passes(p, MAT) for p in points] == [True, True, False, False, False]
    assert choose(points, MAT) == 100.0
    neg = [dict(p, **{"lambda": -p["lambda"]}) for p in points]
    assert choose(neg, MAT) == -100.0  # largest |lambda|, sign kept
    assert choose(points[2:], MAT) is None


def test_missing_calibration_names_the_command_and_its_cost(digits) -> None:
    card = dataclasses.replace(digits.card, name="imagefolder_abc", size=32, train_size=5000)
    msg = str(missing_calibration("sep_neg", card, "convnet"))
    assert "xrbench calibrate --defense sep_neg --dataset imagefolder_abc --model convnet" in msg
    assert f"{len(GRID) + 1} trainings of 10 epochs" in msg and "roughly" in msg
    with pytest.raises(XRBenchError, match="xrbench calibrate --defense sep_pos"):
        build_recipe("sep_pos", card, "convnet")
    # an imagefolder is named by a hash of its files but typed as its path
    folder = dataclasses.replace(card, name="imagefolder:0fe268ffd5c7",
                                 source="torchvision ImageFolder at /data/my photos (name: "
                                        "sha256 0fe268ffd5c7 of its 30 images)")
    assert "--dataset 'imagefolder:/data/my photos' --model lenet" in str(
        missing_calibration("sep_pos", folder, "lenet"))


def test_shipped_digits_calibrations_are_found_first(digits) -> None:
    for defense, sign in (("sep_pos", 1), ("sep_neg", -1)):
        found = find_calibration(defense, "digits", "convnet")
        assert found is not None and found.shipped
        record = json.loads(found.path.read_text())
        assert found.chosen == record["chosen"] and sign * found.chosen > 0
        assert found.chosen == choose(record["points"], record["reference"])  # the rule
        assert record["protocol_version"] == 2 and found.sha256 == sha256_file(found.path)
        recipe = build_recipe(defense, digits.card, "convnet")
        assert recipe.lambda_ == found.chosen and found.sha256 in recipe.lambda_source


def test_a_users_calibration_is_used_and_recorded(digits, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XRBENCH_CACHE", str(tmp_path))
    assert not (shipped_dir() / record_name("sep_pos", "digits", "lenet")).exists()
    with pytest.raises(XRBenchError, match="--model lenet"):
        build_recipe("sep_pos", digits.card, "lenet")
    path = tmp_path / "calibrations" / record_name("sep_pos", "digits", "lenet")
    write_json(path, {"defense": "sep_pos", "dataset": "digits", "model": "lenet",
                      "chosen": 123.0})
    recipe = build_recipe("sep_pos", digits.card, "lenet")
    assert recipe.lambda_ == 123.0
    assert "from the user's cache" in recipe.lambda_source
    assert sha256_file(path) in recipe.lambda_source
    write_json(path, {"defense": "sep_pos", "dataset": "digits", "model": "lenet",
                      "chosen": None})
    with pytest.raises(XRBenchError, match="no lambda of its grid passed"):
        build_recipe("sep_pos", digits.card, "lenet")
    path.write_text("{not json")
    with pytest.raises(XRBenchError, match=str(path.name)):
        build_recipe("sep_pos", digits.card, "lenet")


@pytest.mark.slow
def test_calibrate_trains_scores_records_and_resumes(tmp_path, capsys) -> None:
    """A real (tiny) calibration through the CLI: MAT and two grid points, one epoch each."""
    args = ["calibrate", "--defense", "sep_neg", "--model", "lenet", "--grid", "10", "1e12",
            "--epochs", "1", "--quiet"]
    env_cache = tmp_path / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("XRBENCH_CACHE", str(env_cache))
    try:
        code = main(args)
        first = capsys.readouterr().out
        path = env_cache / "calibrations" / record_name("sep_neg", "digits", "lenet")
        record = json.loads(path.read_text())
        assert record["grid"] == [-10.0, -1e12]
        assert [p["lambda"] for p in record["points"]] == [-10.0, -1e12]
        assert record["short_recipe"]["epochs"] == 1
        assert record["chosen"] == choose(record["points"], record["reference"])
        assert code == (0 if record["chosen"] is not None else 1)
        for point in record["points"]:  # each point's verdict is the rule's
            assert point["passes"] == passes(point, record["reference"])
            assert point["status"] == "trained" or point["status"].startswith("diverged")
        assert "(MAT, the reference)" in first and "rule:" in first
        # resuming: every grid point is a cached checkpoint; the same record is kept
        before = path.read_bytes()
        assert main(args) == code
        assert path.read_bytes() == before
        # a different calibration does not silently replace the record
        assert main([*args[:5], "--grid", "10", "--epochs", "1", "--quiet"]) == 2
        assert "--force" in capsys.readouterr().err
        if record["chosen"] is not None:  # train/evaluate now use it for lenet on digits
            recipe = build_recipe("sep_neg", dataset_card("digits"), "lenet")
            assert recipe.lambda_ == record["chosen"]
    finally:
        mp.undo()


def test_calibrate_refuses_what_it_cannot_calibrate(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--defense", "mat"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["calibrate", "--defense", "sep_pos", "--grid", "0"]) == 2
    assert "non-zero" in capsys.readouterr().err
