"""docs/adding-a-metric.md stays true: its code blocks, run as written, add a metric to a
real evaluation (entry, parameters, per-example file, printed summary)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import xrbench.stages as stages
from xrbench import api
from xrbench.cli import summary_table
from xrbench.leaderboard.schema import read_entry

DOC = Path(__file__).parents[1] / "docs" / "adding-a-metric.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def sparsity_stage(monkeypatch):
    metric_code, stage_code = _blocks("python")
    metric = types.ModuleType("xrbench.metrics.sparsity")
    exec(compile(metric_code, f"{DOC}:metric", "exec"), metric.__dict__)
    monkeypatch.setitem(__import__("sys").modules, "xrbench.metrics.sparsity", metric)
    import xrbench.metrics

    monkeypatch.setattr(xrbench.metrics, "sparsity", metric, raising=False)
    ns = dict(vars(stages))
    exec(compile(stage_code, f"{DOC}:stage", "exec"), ns)
    monkeypatch.setattr(stages, "STAGES", stages.STAGES + (ns["Sparsity"](),))
    return metric


def test_the_worked_example_adds_a_metric(sparsity_stage, fixed_checkpoint, tmp_path):
    # the metric on known answers first: a one-hot map, an even map
    one_hot = torch.zeros(1, 64)
    one_hot[0, 5] = 1.0
    v = one_hot.sort(dim=1).values
    n = 64
    k = torch.arange(1, n + 1, dtype=v.dtype)
    gini = 1 - 2 * ((n - k + 0.5) * v).sum(dim=1) / (n * v.sum(dim=1))
    assert gini.item() == pytest.approx(1 - 1 / n)

    res = api.evaluate("normal", profile="smoke", checkpoint=str(fixed_checkpoint),
                       out=tmp_path / "out",
                       progress=False, cache_root=tmp_path / "cache", device="cpu")
    e = read_entry(res.path)  # schema-valid with the new metric
    s = e["metrics"]["sparsity"]
    assert 0 < s["value"] < 1 and s["n"] == 20
    assert e["protocol"]["parameters"]["sparsity"] == {}
    gini = res.examples["sparsity/gini"]
    assert gini.shape == (20,) and np.mean(gini.astype(np.float64)) == pytest.approx(s["value"])
    assert "Gini sparsity" in summary_table(e)

    # its column reaches every report with no edit under leaderboard/
    from xrbench.leaderboard import regress as rg
    from xrbench.leaderboard.board import build_board
    from xrbench.leaderboard.document import board_document, validate_document
    from xrbench.leaderboard.html import render_html
    from xrbench.leaderboard.render import render_markdown

    shown = f"{s['value']:.3f}"
    board = build_board([e], reported_mode="none")
    md = render_markdown(board)
    header = next(line for line in md.splitlines() if line.startswith("| defense"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells.index("Gini sparsity") == cells.index("Retrieval (%)") + 1  # order 95
    row = next(line for line in md.splitlines() if line.startswith("| normal"))
    assert [c.strip() for c in row.strip("|").split("|")][cells.index("Gini sparsity")] == shown
    doc = board_document(board)
    validate_document(doc)
    assert {"key": "sparsity", "label": "Gini sparsity", "unit": "share",
            "display_scale": 1.0} in doc["columns"]
    assert doc["tables"][0]["rows"][0]["values"]["sparsity"]["value"] == s["value"]
    page = render_html(board, figures=[[]])
    assert ">Gini sparsity</th>" in page and f">{shown}</td>" in page

    base = rg.load_side(res.path)[0]
    moved = rg.Side(base[0].path, json.loads(json.dumps(base[0].entry)),
                    dict(base[0].arrays))
    moved.entry["metrics"]["sparsity"]["value"] *= 1.01
    report = rg.regress(base, [moved], rg.Settings())
    (check,) = [m for m in report.entries[0].metrics if m.metric == "sparsity"]
    assert (check.label, check.better, check.verdict, check.failed) == (
        "Gini sparsity", "", "changed", True)
    assert "sparsity" in rg.render(report)


def test_the_schema_line_of_the_example_is_valid_json():
    import json

    (line,) = _blocks("json")
    assert json.loads("{" + line.strip().rstrip(",") + "}") == {
        "sparsity": {"$ref": "#/$defs/share_metric"}}
