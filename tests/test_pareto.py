"""The Pareto view (PROTOCOL 5.8): the rows of a table on the front of (clean accuracy, PGD
accuracy, Expl@end worst), marked in markdown, JSON and HTML, drawn by ``xrbench plot pareto``;
and the leaderboard's Expl@end (worst) column and sort."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from test_leaderboard import make_entry
from xrbench.cli import main
from xrbench.leaderboard.board import build_board, pareto_front
from xrbench.leaderboard.document import load_document_schema, render_json
from xrbench.leaderboard.html import render_html
from xrbench.leaderboard.render import render_markdown
from xrbench.leaderboard.schema import entry_path, write_entry


def test_pareto_front_known_answers() -> None:
    pts = [(90.0, 10.0, 5.0),   # 0: on (best clean)
           (80.0, 30.0, 5.0),   # 1: on (best PGD)
           (80.0, 20.0, 4.0),   # 2: beaten by 1 on all three
           (70.0, 5.0, 9.0),    # 3: on (best worst case)
           None,                # 4: lacks a number: never on
           (80.0, 30.0, 5.0)]   # 5: equal to 1: both on
    assert pareto_front(pts) == [True, True, False, True, False, True]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0, 1.0)]) == [True]


def _entry(defense: str, clean: float, pgd: float, worst: float | None) -> dict[str, Any]:
    e = make_entry(defense, expl_end=8e-5)
    e["metrics"]["clean_acc"].update(value=clean, ci=[clean - 1, clean + 1])
    e["metrics"]["pgd_acc"].update(value=pgd, ci=[max(pgd - 1, 0.0), pgd + 1])
    if worst is not None:
        e["metrics"]["expl_end_worst"] = {"value": worst, "ci": [worst * 0.9, worst * 1.1],
                                          "n": 2450, "median": worst}
    return e


def _rows() -> list[dict[str, Any]]:
    return [_entry("mat", 90.0, 40.0, 3e-5), _entry("trades", 85.0, 45.0, 2e-5),
            _entry("normal", 99.0, 0.0, 1e-5), _entry("sep_neg", 84.0, 39.0, 2.5e-5),
            _entry("old", 95.0, 50.0, None)]


def test_board_marks_the_front_in_every_format(tmp_path: Path) -> None:
    board = build_board(_rows())
    (table,) = board.tables
    on = {r.entry["defense"]["name"]: r.pareto for r in table.rows}
    assert on == {"mat": True, "trades": True, "normal": True, "sep_neg": False, "old": False}
    md = render_markdown(board)
    for line in md.splitlines():
        if line.startswith("| mat ") or line.startswith("| normal "):
            assert "pareto" in line
        if line.startswith("| sep_neg ") or line.startswith("| old "):
            assert "pareto" not in line
    assert "Pareto front of clean accuracy, PGD accuracy and Expl@end (worst)" in md
    assert "Expl@end worst" in md.splitlines()[[i for i, ln in enumerate(md.splitlines())
                                                if ln.startswith("| defense")][0]]
    doc = json.loads(render_json(board))
    jsonschema.validate(doc, load_document_schema())
    assert {r["defense"]: r["pareto"] for r in doc["tables"][0]["rows"]} == on
    html = render_html(board)
    assert html.count(">pareto") + html.count(" pareto") >= 3


def test_sort_by_worst_case() -> None:
    by_end = [r.entry["defense"]["name"] for r in build_board(_rows()).tables[0].rows]
    by_worst = [r.entry["defense"]["name"]
                for r in build_board(_rows(), sort_by="expl_end_worst").tables[0].rows]
    assert by_worst == ["normal", "trades", "sep_neg", "mat", "old"]  # ascending, None last
    assert by_end != by_worst


def test_plot_pareto_through_the_cli(tmp_path: Path, capsys) -> None:
    for e in _rows()[:4]:
        write_entry(entry_path(tmp_path / "r", e), e)
    out = tmp_path / "front.png"
    assert main(["plot", "pareto", str(tmp_path / "r"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["leaderboard", "--results", str(tmp_path / "r"), "--sort",
                 "expl_end_worst"]) == 0
    md = capsys.readouterr().out
    assert "sorted by Expl@end (worst) ascending" in md
