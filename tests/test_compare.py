"""xrbench compare: paired differences of two entries on the same subset, from their
per-example files (the published digits quick entries ship with them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrbench.cli import main
from xrbench.compare import compare, paired_difference
from xrbench.errors import XRBenchError
from xrbench.leaderboard.schema import read_entry

RESULTS = Path(__file__).parents[1] / "leaderboard" / "results" / "digits" / "convnet" / \
    "grad_x_input"
MAT, SEP_NEG = RESULTS / "quick" / "mat-s0.json", RESULTS / "quick" / "sep_neg-s0.json"


def test_paired_difference_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    d, lo, hi, units = paired_difference(a, a + 0.25, None)
    assert d == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    assert units == 200
    # shared noise cancels: the paired interval is far narrower than the spread of A alone
    b = a + 0.1 + rng.normal(scale=0.01, size=200)
    d, lo, hi, _ = paired_difference(a, b, None)
    assert lo < d < hi and lo > 0.09 and hi < 0.11
    assert hi - lo < 0.1 * (2 * 1.96 * a.std() / np.sqrt(200))
    # groups: whole groups are resampled; the estimate is still the plain mean difference
    groups = np.repeat(np.arange(20), 10)
    d, lo, hi, units = paired_difference(a, b, groups)
    assert units == 20 and d == pytest.approx(float((b - a).mean()))
    with pytest.raises(XRBenchError, match="line up"):
        paired_difference(a, b[:-1], None)


def test_an_entry_against_itself_differs_by_zero():
    rows = compare(MAT, MAT)
    assert len(rows) >= 28 and all(r.diff == 0 and r.lo == r.hi == 0 for r in rows)


def test_published_mat_against_sep_neg():
    rows = {r.metric: r for r in compare(MAT, SEP_NEG)}
    mat, sep = read_entry(MAT)["metrics"], read_entry(SEP_NEG)["metrics"]
    # the values are the entries' own
    assert rows["clean_acc"].a == pytest.approx(mat["clean_acc"]["value"])
    assert rows["expl_end"].b == pytest.approx(sep["expl_end"]["value"], rel=1e-6)
    assert rows["retrieval/relex_adv_mask/0.2"].a == pytest.approx(
        mat["retrieval"]["relex_adv_mask"]["0.2"]["value"])
    # the paper's claim on digits: sep_neg's explanations are harder to manipulate...
    e = rows["expl_end"]
    assert e.diff > 0 and not e.zero_inside and (e.n, e.units) == (2450, 50)
    # ...at a PGD accuracy that the paired interval cannot tell apart from mat's
    assert rows["pgd_acc"].zero_inside


def test_entries_of_different_profiles_are_not_compared(tmp_path):
    with pytest.raises(XRBenchError, match="not comparable: protocol.version is 3 in A and 1"):
        compare(MAT, RESULTS / "paper" / "normal-s0.json")  # protocol v3 quick vs v1 paper
    entry = json.loads(MAT.read_text())
    entry["protocol"]["profile"] = "paper"
    other = tmp_path / "mat-s0.json"
    other.write_text(json.dumps(entry))
    shutil.copy(MAT.with_name("mat-s0.examples.npz"), tmp_path)
    with pytest.raises(XRBenchError, match="not comparable: protocol.profile"):
        compare(MAT, other)


def test_compare_on_the_command_line(capsys):
    assert main(["compare", str(MAT), str(SEP_NEG)]) == 0
    out = capsys.readouterr().out
    assert "A = mat, B = sep_neg" in out and "expl_end (x1e-7)" in out
    assert main(["compare", str(MAT), str(SEP_NEG), "--resamples", "5"]) == 2


def test_an_entry_edited_by_hand_is_reported(tmp_path):
    """Issue 21 case 6: a JSON metric that disagrees with the entry's own per-example file
    is an error naming the metric, not a comparison of the file's values."""
    entry = json.loads(MAT.read_text())
    entry["metrics"]["expl_end"]["value"] *= 2
    edited = tmp_path / "mat-s0.json"
    edited.write_text(json.dumps(entry))
    shutil.copy(MAT.with_name("mat-s0.examples.npz"), tmp_path)
    with pytest.raises(XRBenchError, match="metric expl_end is .* in the entry but .* in its "
                                           "per-example file"):
        compare(edited, SEP_NEG)


def test_a_per_example_file_declaring_huge_arrays_is_refused_before_reading(tmp_path):
    """Issue 21 case 7: a small .examples.npz whose array header declares gigabytes (its
    sha256 updated in the entry) is refused from its zip directory and headers."""
    import hashlib
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (50_000, 50_000)})
    bomb = tmp_path / "mat-s0.examples.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manipulation/expl_end.npy", header.getvalue() + bytes(1000))
    entry = json.loads(MAT.read_text())
    entry["examples"]["sha256"] = hashlib.sha256(bomb.read_bytes()).hexdigest()
    (tmp_path / "mat-s0.json").write_text(json.dumps(entry))
    with pytest.raises(XRBenchError, match="declares 20000000000 bytes but holds"):
        compare(tmp_path / "mat-s0.json", SEP_NEG)
    # a file whose zip directory alone declares too much is refused on that
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manipulation/expl_end.npy", header.getvalue() + bytes(200_000_000))
    entry["examples"]["sha256"] = hashlib.sha256(bomb.read_bytes()).hexdigest()
    (tmp_path / "mat-s0.json").write_text(json.dumps(entry))
    with pytest.raises(XRBenchError, match="beyond the"):
        compare(tmp_path / "mat-s0.json", SEP_NEG)
