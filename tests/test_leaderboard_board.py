"""Leaderboards people can read: tables with reported rows beside measured ones, duplicates
reported not merged, bad files skipped with a warning, the combined JSON document, and the
``xrbench leaderboard`` command (PROTOCOL.md 5.7, 8, 9)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from test_leaderboard import make_entry, make_entry_v2
from xrbench.cli import main
from xrbench.leaderboard.board import build_board, load_board
from xrbench.leaderboard.document import board_document, load_document_schema, render_json
from xrbench.leaderboard.render import render_markdown
from xrbench.leaderboard.schema import entry_path, reported_dir, scan_entries

SEP_NEG_CONVNET_MNIST = ("sep_neg", "806.204", "657.180")


def mnist(defense: str, pgd: float, expl_end: float, seed: int = 0,
          version: int = 2) -> dict[str, Any]:
    """A measured entry in the table the SEP paper's MNIST ConvNet rows join."""
    e = make_entry_v2(defense, seed, expl_end)
    e["dataset"]["name"] = "mnist"
    e["protocol"].update(profile="paper", version=version)
    e["metrics"]["pgd_acc"]["value"] = pgd
    e["metrics"]["pgd_acc"]["ci"] = [max(0.0, pgd - 1), min(100.0, pgd + 1)]
    return e


def _reported() -> list[Any]:
    return [x.entry for x in scan_entries([reported_dir()]).loaded]


def _lines(md: str, start: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith(start)]


def _row(md: str, defense: str, source: str = "measured") -> list[str]:
    line = next(ln for ln in md.splitlines()
                if ln.startswith(f"| {defense} ") and f"| {source}" in ln)
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_reported_rows_sit_beside_measured_rows_of_the_same_key() -> None:
    measured = [mnist("mat", 80.0, 3e-5), mnist("sep_neg", 78.0, 9e-5),
                mnist("sep_pos", 79.0, 1e-5), mnist("normal", 0.0, 2e-5)]
    board = build_board(measured + _reported(), reported_mode="beside")
    assert len(board.tables) == 1  # beside: no tables of reported rows only
    table = board.tables[0]
    assert table.key == ("mnist", "convnet", "grad_x_input", "paper", 2)
    assert [r.source for r in table.rows] == ["measured"] * 4 + ["reported: SEP paper, Table 2"] * 4
    md = render_markdown(board)
    assert _lines(md, "### ") == ["### mnist / convnet / grad_x_input / profile paper / protocol v2"]
    header = [c.strip() for c in _lines(md, "| defense")[0].strip("|").split("|")]
    assert header[:3] == ["defense", "seed", "source"]
    # the reported row as the paper printed it (Expl in 1e-7, percent), no seed, no flags
    assert _row(md, "sep_neg", "reported: SEP paper, Table 2")[:8] == [
        "sep_neg", "\u2013", "reported: SEP paper, Table 2", "98.97", "90.34", "806.204",
        "657.180", "\u2013"]
    assert _row(md, "sep_neg")[:6] == ["sep_neg", "0", "measured", "99.10", "78.00",
                                       "1200.000"]
    assert any(ln.startswith("reported: SEP paper, Table 2 = numbers as printed in Are "
                             "Classification Robustness") for ln in md.splitlines())
    # two correlation answers: measured rows, then the paper's own rows, never mixed
    leads = [ln for ln in md.splitlines() if ln.startswith("Correlation with PGD accuracy")]
    assert [ln.split(")")[0] for ln in leads] == [
        "Correlation with PGD accuracy (measured rows",
        "Correlation with PGD accuracy (reported rows, SEP paper, Table 2"]
    assert [cs.rows for cs in table.correlations] == ["measured", "reported: SEP paper, Table 2"]
    assert all(cs.n_rows == 4 for cs in table.correlations)
    # measured: PGD 0, 78, 79, 80 against Expl@end 2, 9, 1, 3 (x1e-5) -> rho = 0.2 (hand:
    # ranks x 1 2 3 4, y 2 4 1 3: 1 - 6 * (1 + 4 + 4 + 1) / 60 = 0)
    end = next(c for c in table.correlations[0].items if c.metric == "expl_end")
    assert end.spearman == pytest.approx(0.0, abs=1e-12)
    # the intervals view: measured values with their intervals, reported ones as printed
    iv = render_markdown(board, intervals=True)
    assert _row(iv, "sep_pos", "reported")[3:7] == ["98.8", "89.4", "93.033", "61.545"]
    assert _row(iv, "sep_pos")[3:5] == ["99.10 [98.50, 99.60]", "79.00 [78.00, 80.00]"]


def test_superseded_protocol_versions_are_left_out_with_a_note_naming_them(tmp_path,
                                                                          capsys) -> None:
    """Issue 23 item 6: the terminal leaderboard starts with the newest protocol's table;
    older versions' tables sit behind --superseded, and a closing note says so."""
    entries = [mnist("mat", 80.0, 3e-5, version=1), mnist("normal", 0.0, 2e-5, version=2),
               mnist("mat", 80.0, 3e-5, version=3)]
    entries[1]["dataset"]["name"] = "digits"  # another table, still an older version
    board = build_board(entries, reported_mode="none", superseded=False)
    assert [t.key[4] for t in board.tables] == [3]
    assert [(k[0], k[4]) for k in board.superseded] == [("digits", 2), ("mnist", 1)]
    md = render_markdown(board)
    assert md.rstrip().splitlines()[-1] == (
        "_Not shown: 2 tables of superseded protocol versions (v2, v1); "
        "`xrbench leaderboard --superseded` shows them._")
    doc = board_document(board)
    jsonschema.validate(doc, load_document_schema())
    assert [k["protocol_version"] for k in doc["superseded"]] == [2, 1]
    from xrbench.leaderboard.document import render_board
    assert ("<p class=\"meta\">Not shown: 2 tables of superseded protocol versions (v2, v1); "
            "xrbench leaderboard --superseded shows them.</p>") in render_board(board, "html")
    # one version only: nothing is superseded, and nothing is said
    alone = build_board(entries[:1], reported_mode="none", superseded=False)
    assert len(alone.tables) == 1 and not alone.superseded
    assert "Not shown" not in render_markdown(alone)
    # the command: left out by default, shown with the flag
    folder = tmp_path / "results"
    for i, e in enumerate(entries):
        f = folder / f"{i}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(e))
    assert main(["leaderboard", "--results", str(folder), "--reported", "none"]) == 0
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("### ")] == [
        "### mnist / convnet / grad_x_input / profile paper / protocol v3"]
    assert "--superseded` shows them" in out
    assert main(["leaderboard", "--results", str(folder), "--reported", "none",
                 "--superseded"]) == 0
    out = capsys.readouterr().out
    assert sum(ln.startswith("### ") for ln in out.splitlines()) == 3
    assert "Not shown" not in out


def test_reported_rows_join_every_protocol_version_and_stand_alone_elsewhere() -> None:
    board = build_board([mnist("mat", 80.0, 3e-5, version=1), mnist("mat", 80.0, 3e-5)]
                        + _reported(), reported_mode="all")
    titles = [t.title for t in board.tables]
    # the newest protocol version first (issue 23 item 6), superseded ones behind it
    assert titles[:2] == ["mnist / convnet / grad_x_input / profile paper / protocol v2",
                          "mnist / convnet / grad_x_input / profile paper / protocol v1"]
    assert all(len(t.rows) == 5 for t in board.tables[:2])  # 1 measured + 4 reported each
    rest = board.tables[2:]
    assert all(t.reported_only and t.key[4] is None for t in rest)
    # SEP Table 2: 6 (dataset, model) tables, one hosted; Table 15: 4; Joo: 3
    assert len(rest) == 6 - 1 + 4 + 3
    assert "cifar10 / lenet / gradient / profile paper / reported only" in titles
    assert board.n_entries == 2 + 54
    none = build_board([mnist("mat", 80.0, 3e-5)] + _reported(), reported_mode="none")
    assert [len(t.rows) for t in none.tables] == [1]


def test_reported_rows_join_a_measured_table_of_any_profile() -> None:
    """Table 15 (the paper's own setup) beside Fashion-MNIST rows a CPU measured at quick:
    the reported rows have no xrbench profile, so they join every profile's table of the same
    dataset, model and explainer, and are not left standing alone as well."""
    e = mnist("mat", 70.0, 5e-6, version=3)
    e["dataset"]["name"] = "fashion_mnist"
    e["explainer"]["name"] = "guided_backprop"
    e["protocol"]["profile"] = "quick"
    board = build_board([e] + _reported(), reported_mode="all")
    host = board.tables[0]
    assert host.title == "fashion_mnist / convnet / guided_backprop / profile quick / protocol v3"
    assert [(r.source, r.entry["defense"]["name"]) for r in host.rows] == [
        ("measured", "mat"), *(("reported: SEP paper, Table 15", d)
                               for d in ("normal", "sep_pos", "mat", "sep_neg"))]
    assert not any(t.title.startswith("fashion_mnist / convnet / guided_backprop")
                   for t in board.tables[1:])
    md = render_markdown(build_board([e] + _reported(), reported_mode="beside"))
    assert _row(md, "mat", "reported")[:7] == ["mat", "–", "reported: SEP paper, Table 15",
                                               "62.85", "73.98", "97.726", "72.402"]


def test_a_reported_only_table_leaves_out_what_the_paper_did_not_report() -> None:
    board = build_board(_reported(), reported_mode="all")
    joo = next(t for t in board.tables if t.title.startswith("cifar10 / lenet / gradient"))
    md = render_markdown(build_board([r.entry for r in joo.rows]))
    header = [c.strip() for c in _lines(md, "| defense")[0].strip("|").split("|")]
    assert header == ["defense", "source", "clean acc (%)", "RPS cos 16/255", "Insertion (%)",
                      "Adv-Ins. (%)"]
    assert _row(md, "l2_cosd", "reported")[2:] == ["86.1", "0.895", "43.3", "35.8"]
    assert _row(md, "atex \u00a7", "reported")[0] == "atex \u00a7"  # no xrbench defense
    assert ("\u00a7 no xrbench defense implements this reported method (named as the source "
            "names it): atex = ATEX (Tang et al. 2022), iga = IGA (Singh et al. 2020), "
            "l2 = \u21132.") in md
    assert ("Correlation with PGD accuracy (reported rows, Joo et al. 2023, Table 1): the "
            "source reports no PGD accuracy.") in md


def test_duplicates_are_both_shown_marked_and_left_out_of_correlations(tmp_path: Path) -> None:
    entries = [mnist(d, p, x) for d, p, x in (("mat", 80.0, 3e-5), ("sep_neg", 78.0, 9e-5),
                                              ("sep_pos", 79.0, 1e-5), ("normal", 0.0, 2e-5))]
    a, b = tmp_path / "a", tmp_path / "b"
    for root, es in ((a, entries), (b, [copy.deepcopy(entries[0])])):
        for e in es:
            p = entry_path(root, e)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(e), encoding="utf-8")
    board = load_board([a, b], reported_mode="none")
    assert len(board.duplicates) == 1
    dup = board.duplicates[0]
    assert (dup.defense, dup.seed, dup.source) == ("mat", 0, "measured")
    assert dup.files == [str(a / "mnist/convnet/grad_x_input/paper/mat-s0.json"),
                         str(b / "mnist/convnet/grad_x_input/paper/mat-s0.json")]
    md = render_markdown(board)
    assert len(_lines(md, "| mat \u20211 ")) == 2  # both rows, each marked
    note = next(ln for ln in md.splitlines() if ln.startswith("\u20211 = "))
    assert dup.files[0] in note and dup.files[1] in note and "neither merged" in note
    cs = board.tables[0].correlations[0]
    assert cs.excluded_duplicates == 2 and {c.n for c in cs.items} == {3}
    assert "2 duplicated rows left out" in md and "fewer than 4" in md
    doc = board_document(board)
    assert doc["duplicates"][0]["files"] == dup.files
    assert [r["duplicate"] for r in doc["tables"][0]["rows"]].count(1) == 2


def test_grid_points_of_one_defense_are_rows_not_duplicates() -> None:
    """A sweep's --grid trades.beta=1,6 gives two trades rows with seed 0 and other recipes:
    both are measured rows (and count in the correlations), not a duplicate group."""
    entries = [mnist("mat", 80.0, 3e-5), mnist("sep_neg", 78.0, 9e-5),
               mnist("normal", 0.0, 2e-5)]
    for beta, pgd in ((1, 40.0), (6, 60.0)):
        e = mnist("trades", pgd, 4e-5)
        e["defense"]["recipe"] = {**e["defense"].get("recipe", {}), "beta": beta}
        e["defense"]["recipe_hash"] = f"hash-beta-{beta}"
        entries.append(e)
    board = build_board(entries, reported_mode="none")
    assert board.duplicates == []
    rows = board.tables[0].rows
    assert sum(_get_name(r.entry) == "trades" for r in rows) == 2
    cs = board.tables[0].correlations[0]
    assert cs.excluded_duplicates == 0 and {c.n for c in cs.items} == {5}
    same = [mnist("trades", 40.0, 4e-5), mnist("trades", 40.0, 4e-5)]  # one recipe: a duplicate
    assert len(build_board(entries[:3] + same, reported_mode="none").duplicates) == 1


def _get_name(entry: dict[str, Any]) -> str:
    return entry["defense"]["name"]


def test_the_json_document_is_schema_valid_and_complete(tmp_path: Path) -> None:
    schema = load_document_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    evil = "<script>alert(1)</script>"
    entries = [mnist("mat", 80.0, 3e-5), mnist(evil, 10.0, 1e-5), mnist("normal", 0.0, 2e-5),
               mnist("sep_neg", 78.0, 9e-5)]
    board = build_board(entries + _reported(), reported_mode="all")
    text = render_json(board)
    doc = json.loads(text)
    jsonschema.validate(doc, schema)
    assert doc["format"] == "xrbench-leaderboard" and doc["format_version"] == 1
    t = doc["tables"][0]
    assert t["key"] == {"dataset": "mnist", "model": "convnet", "explainer": "grad_x_input",
                        "profile": "paper", "protocol_version": 2}
    assert [r["source"] for r in t["rows"]] == ["measured"] * 4 + ["reported"] * 4
    assert t["rows"][0]["defense"] == evil  # data stays data (escaping is for HTML/markdown)
    mat = next(r for r in t["rows"] if r["defense"] == "mat")
    assert mat["values"]["expl_end"]["value"] == 3e-5
    assert mat["values"]["expl_end"]["ci"] == pytest.approx([2.7e-5, 3.3e-5])
    assert mat["values"]["pgd_acc"]["value"] == 80.0 and mat["seed"] == 0
    rep = next(r for r in t["rows"] if r["source"] == "reported" and r["defense"] == "sep_neg")
    assert rep["reported"]["table"] == "Table 2" and rep["seed"] is None
    assert rep["values"]["expl_end"]["value"] == pytest.approx(657.180e-7)
    assert rep["file"].startswith("(entry ")  # given in memory: named by its position
    corr = t["correlations"][0]
    assert corr["rows"] == "measured" and corr["n_rows"] == 4
    end = next(c for c in corr["items"] if c["metric"] == "expl_end")
    assert end["n"] == 4 and -1 <= end["spearman_ci"][0] <= end["spearman_ci"][1] <= 1
    assert any(n.startswith("Rows sorted") or n.startswith("Measured rows first")
               for n in t["notes"])
    assert render_json(build_board(entries + _reported(), reported_mode="all")) == text
    bad = copy.deepcopy(doc)
    bad["tables"][0]["rows"][0]["values"]["expl_end"]["value"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# --- the command --------------------------------------------------------------------------

def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_leaderboard_without_arguments_prints_published_tables_with_correlations(capsys) -> None:
    code, out, err = _run(capsys, "leaderboard")
    assert code == 0
    heads = _lines(out, "### ")
    assert "### digits / convnet / grad_x_input / profile quick / protocol v3" in heads
    assert "### mnist / convnet / grad_x_input / profile paper / reported only" in heads
    assert "### cifar10 / lenet / gradient / profile paper / reported only" in heads
    block = out.split("profile quick / protocol v3")[1].split("### ")[0]
    assert "Correlation with PGD accuracy (measured rows): Spearman's rho and Kendall's" in block
    corr = [ln for ln in block.splitlines() if ln.startswith("- Expl@end: Spearman ")]
    assert len(corr) == 1 and "Kendall" in corr[0] and "(n = 7)" in corr[0]
    assert err == ""


def test_leaderboard_formats_aliases_and_refusals(capsys, tmp_path: Path) -> None:
    out = tmp_path / "lb.json"
    code, stdout, _ = _run(capsys, "leaderboard", "--out", str(out))  # format from suffix
    assert code == 0 and stdout.startswith(f"wrote {out} (json; ")
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, load_document_schema())
    files = {r["file"] for t in doc["tables"] for r in t["rows"]}
    # shipped files are named relative to their folder: the output does not depend on
    # where xrbench is installed
    assert "published/digits/convnet/grad_x_input/quick/mat-s0.json" in files
    assert "reported/sep-paper-table2/mnist/convnet/grad_x_input/paper/sep_neg.json" in files
    assert doc["inputs"] == {"results": ["published"], "reported": "all"}
    code, _, err = _run(capsys, "leaderboard", "--output", str(out), "--format", "json")
    assert code == 2 and "exists; pass --force" in err  # --output: the older name
    code, _, err = _run(capsys, "leaderboard", "--out", str(tmp_path / "x.html"),
                        "--format", "md")
    assert code == 2 and "--format md but --out" in err
    md = tmp_path / "lb.txt"
    assert _run(capsys, "leaderboard", "--intervals", "--out", str(md))[0] == 0  # md
    text = md.read_text()
    assert "99.63 [99.07, 100.00]" in text and "Value [95% bootstrap interval]" in text
    assert "Correlation with PGD accuracy (measured rows)" in text


def test_bad_files_are_skipped_with_a_warning_naming_them(capsys, caplog,
                                                        tmp_path: Path) -> None:
    root = tmp_path / "results"
    for e in (mnist("mat", 80.0, 3e-5), make_entry("normal")):
        p = entry_path(root, e)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(e), encoding="utf-8")
    broken = root / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with caplog.at_level("WARNING", logger="xrbench.leaderboard"):
        code, out, err = _run(capsys, "leaderboard", "--results", str(root))
    assert code == 0
    assert any(r.getMessage().startswith(f"skipped {broken}: malformed JSON")
               for r in caplog.records)  # on stderr through logging, in the command
    assert "| mat " in out and "| normal " in out
    # with --results, reported rows only sit beside measured ones
    assert "reported: SEP paper, Table 2" in out and "reported only" not in out
    # repeatable: a second folder adds its entries
    other = tmp_path / "other"
    e = mnist("sep_neg", 78.0, 9e-5)
    p = entry_path(other, e)
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(e), encoding="utf-8")
    code, out, _ = _run(capsys, "leaderboard", "--results", str(root), "--results", str(other),
                        "--reported", "none")
    assert code == 0 and "| sep_neg " in out and "reported:" not in out
    # nothing valid left: one error line naming the skipped file, exit 2
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.json").write_text("[1, 2]", encoding="utf-8")
    code, _, err = _run(capsys, "leaderboard", "--results", str(only_bad))
    assert code == 2 and err.count("\n") == 1
    assert "no entries (*.json) found under" in err and str(only_bad / "x.json") in err


def test_a_table_says_which_torch_and_threads_made_it_and_how_to_reproduce_it(tmp_path) -> None:
    """Issue 23 item 1: each measured table names the torch and thread count of its rows, and,
    where every row's checkpoint lies beside its entry, how to reproduce a row (score the
    checkpoint) and how a retrain is judged."""
    from xrbench.leaderboard.board import Row
    from xrbench.leaderboard.render_notes import table_notes

    rows = []
    for i, defense in enumerate(("mat", "sep_neg")):
        e = mnist(defense, 80.0, 3e-5, version=3)
        e["environment"] = {"torch": "2.15.0+cu132", "threads": 1}
        path = tmp_path / f"{defense}-s0.json"
        path.write_text(json.dumps(e))
        rows.append(Row(e, str(path), path=path))
    board = build_board(rows, reported_mode="none")
    (note,) = [n for n in table_notes(board.tables[0]) if n.startswith("Measured with")]
    assert note == "Measured with torch 2.15.0+cu132, one thread."  # no checkpoints beside
    for r in rows:
        r.path.with_name(r.path.name[:-5] + ".pt").write_bytes(b"weights")
    (note,) = [n for n in table_notes(build_board(rows, reported_mode="none").tables[0])
               if n.startswith("Measured with")]
    assert note.startswith("Measured with torch 2.15.0+cu132, one thread. Each row's "
                           "checkpoint lies beside its entry: scoring it (evaluate --checkpoint)")
    assert "only on as many threads" in note and "regress --mode training" in note
    rows[1].entry["environment"]["threads"] = 2
    (note,) = [n for n in table_notes(build_board(rows, reported_mode="none").tables[0])
               if n.startswith("Measured with")]
    assert note.startswith("Measured with torch 2.15.0+cu132, 1, 2 threads.")


def test_a_source_is_described_once_and_each_row_adds_only_its_own_sentences() -> None:
    """The Table 15 rows share their note; two of them add a sentence of their own ("As
    printed, ..."), which follows the source's one description, named by defense."""
    from xrbench.leaderboard.render_notes import _shared_sentences

    assert _shared_sentences(["A 5.1.", "A 5.1. B 73.98 x."]) == ("A 5.1.", ["", "B 73.98 x."])
    assert _shared_sentences(["A. B 1.", "A. B 2."]) == ("A.", ["B 1.", "B 2."])
    assert _shared_sentences(["Same.", "Same."]) == ("Same.", ["", ""])
    board = build_board([e for e in _reported() if e["dataset"]["name"] == "fashion_mnist"
                         and e["model"]["name"] == "convnet"])
    md = render_markdown(board)
    src = "reported: SEP paper, Table 15"
    heads = _lines(md, f"{src} = numbers as printed in")
    assert len(heads) == 1 and heads[0].endswith("the paper's section 5.1.")
    own = _lines(md, f"{src}, ")
    assert [ln[len(src) + 2:].split(":")[0] for ln in own] == ["mat", "sep_neg"]
    assert all(": As printed, the PGD accuracy (" in ln for ln in own)
