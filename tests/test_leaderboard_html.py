"""The HTML leaderboard: one self-contained page, every user string escaped, figures embedded,
columns sortable without a CDN; opened in headless Chromium (screenshot, DOM, sorting).

The Chromium tests skip where no ``chromium`` is installed, unless XRBENCH_REQUIRE_CHROMIUM=1
(``.ci/run`` installs it and sets that), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_leaderboard_board import _reported, mnist
from xrbench.leaderboard.board import build_board
from xrbench.leaderboard.html import render_html, script_hash

EVIL = "<script>alert(1)</script>"


def _board() -> Any:
    entries = [mnist("mat", 80.0, 3e-5), mnist(EVIL, 10.0, 1e-5), mnist("normal", 0.0, 2e-5),
               mnist("sep_neg", 78.0, 9e-5), mnist("trades", 60.0, 4e-5)]
    entries[1]["not_applicable"] = {}
    entries[1]["flags"][EVIL] = True
    return build_board(entries + _reported(), reported_mode="all")


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(_board())


def test_every_user_string_is_escaped_and_nothing_is_fetched(page: str) -> None:
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the page's own sorting script, nothing else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page
    # the CSP allows exactly that script (by hash) and data: images, nothing from outside
    script = page.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert script_hash() == f"'sha256-{digest}'"
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and "img-src data:" in csp
    # figures are embedded PNGs (the scatter of Expl@end against PGD accuracy)
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert imgs and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for _, b in imgs)
    assert imgs[0][0].startswith("Expl@end against PGD accuracy, measured rows of mnist")
    # reported rows are labelled in their own column and styled apart
    assert page.count('<tr class="reported">') >= 4
    assert "reported: SEP paper, Table 2" in page and "Correlation with PGD accuracy" in page


def test_figures_can_be_supplied_and_must_match_the_tables() -> None:
    board = _board()
    png = b"\x89PNG\r\n\x1a\nfake"
    figs = [[(f"<b>{i}</b>", png)] for i in range(len(board.tables))]
    page = render_html(board, figures=figs)
    assert page.count(base64.b64encode(png).decode()) == len(board.tables)
    assert "&lt;b&gt;0&lt;/b&gt;" in page and "<b>0</b>" not in page
    with pytest.raises(ValueError, match="figures"):
        render_html(board, figures=[])


def _chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        if os.environ.get("XRBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail("XRBENCH_REQUIRE_CHROMIUM=1 but no chromium on PATH (.ci/run installs "
                        "it with apt-get install chromium)")
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    return exe


def _browser(exe: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_page_opens_in_headless_chromium(tmp_path: Path, page: str) -> None:
    exe = _chromium()
    html_file = tmp_path / "lb.html"
    html_file.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    _browser(exe, f"--screenshot={shot}", "--window-size=1280,1600", html_file.as_uri(),
             cwd=tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1600, 1280)
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, table, figure: not a blank or single-colour page
    dom = _browser(exe, "--dump-dom", html_file.as_uri(), cwd=tmp_path).stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the name is text in the DOM
    assert dom.count("<script") == 1  # no injected script element
    assert "mnist / convnet / grad_x_input / profile paper / protocol v2" in dom


def test_clicking_a_header_sorts_the_rows_in_chromium(tmp_path: Path, page: str) -> None:
    """The page's own script sorts: a test script (allowed by adding its hash to the CSP)
    clicks the first table's PGD header, then the DOM is dumped."""
    exe = _chromium()
    click = ('var th = Array.prototype.find.call(document.querySelectorAll("table.lb")[0]'
             '.tHead.rows[0].cells, function (c) { return c.textContent === "PGD acc (%)"; });'
             ' th.click();')
    digest = base64.b64encode(hashlib.sha256(click.encode()).digest()).decode()
    test_page = (page.replace(f"script-src {script_hash()}".replace("'", "&#x27;"),
                              f"script-src {script_hash()} 'sha256-{digest}'"
                              .replace("'", "&#x27;"))
                 .replace("</body>", f"<script>{click}</script></body>"))
    assert test_page != page
    html_file = tmp_path / "sort.html"
    html_file.write_text(test_page, encoding="utf-8")
    dom = _browser(exe, "--dump-dom", html_file.as_uri(), cwd=tmp_path).stdout
    table = dom.split('<table class="lb">')[1].split("</table>")[0]
    assert 'aria-sort="ascending"' in table
    rows = [(row.split('"', 2)[1],  # the row's class: measured or reported
             re.sub(r"<[^>]+>", "", row.split("<td")[1].split(">", 1)[1]).split(" ")[0])
            for row in table.split("<tr")[2:]]
    pgd = {"normal": 0.0, "&lt;script&gt;alert(1)&lt;/script&gt;": 10.0, "trades": 60.0,
           "sep_neg": 78.0, "mat": 80.0}
    # every row by PGD accuracy ascending, the paper's rows (normal 0.00, then 89.4-90.34)
    # among them: before the click, measured rows came first, by Expl@end
    assert rows == [("measured", "normal"), ("reported", "normal"),
                    ("measured", "&lt;script&gt;alert(1)&lt;/script&gt;"),
                    ("measured", "trades"), ("measured", "sep_neg"), ("measured", "mat"),
                    ("reported", "sep_pos"), ("reported", "mat"), ("reported", "sep_neg")]
    assert [n for c, n in rows if c == "measured"] == sorted(pgd, key=pgd.get)


def test_published_tables_embed_the_figures_of_their_per_example_files() -> None:
    """Under the published quick table: its scatter, then the landscapes, the insertion
    curves and a gallery of one pair per measured row, drawn from the entries' per-example
    files."""
    from xrbench.leaderboard.board import load_board
    from xrbench.leaderboard.html import SIDECAR_FIGURES, sidecar_figures

    board = load_board(None, reported_mode="none")
    quick = next(t for t in board.tables if "profile quick / protocol v3" in t.title)
    figs = sidecar_figures(quick)
    assert [c.split(":")[0] for c, _ in figs] == [c for c, _, _ in SIDECAR_FIGURES]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png in figs)
    page = render_html(build_board([r.entry for r in quick.rows], reported_mode="none"),
                       figures=[figs])
    assert page.count("<figure>") == 3 and "Saliency gallery" in page
    # the gallery's caption says the number of pairs it shows: one row per measured row
    # (0.6 in of titles and 2.05 in a row at 100 dpi), of the 4 pairs each entry keeps
    caption, png = figs[2]
    assert caption.startswith("Saliency gallery, 1 manipulated pair per measured row, the "
                              "first of the pairs its entry keeps (PROTOCOL 5.2)")
    height = int.from_bytes(png[20:24], "big")  # the PNG's IHDR height
    assert height == round(100 * (0.6 + 2.05 * len(quick.rows))) and len(quick.rows) == 7
    from xrbench.stages import GALLERY_PAIRS

    assert GALLERY_PAIRS == 4 and SIDECAR_FIGURES[2][2] == {"pairs": 1}


# --- layout: the tables fit a 1280 px window, a phone scrolls inside a table's wrapper -------

def test_layout_rules_keep_tables_narrow_and_headers_say_what_they_measure(page: str) -> None:
    """The style sheet's rules that make the widest tables fit 1280 px (headers wrap, numbers
    do not, tight cells) and keep a phone's page from scrolling sideways (a table scrolls in
    its wrapper); a wrapped header still says in full, in its tooltip, what it measures."""
    style = page.split("<style>")[1].split("</style>")[0]
    wide, phone = style.split("@media (max-width:40rem)")
    rules = {sel.strip(): body for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", wide)}
    assert "white-space:normal" in rules["table.lb th"]  # headers wrap ...
    assert "white-space:nowrap" in rules["table.lb td.num"]  # ... numbers never do
    assert "overflow-x:auto" in rules[".wide"]  # a table too wide scrolls in its wrapper
    assert "max-width:100%" in rules["figure img"]
    pad = re.search(r"padding:([.\d]+)rem ([.\d]+)rem", rules["table.lb th,table.lb td"])
    assert pad and float(pad.group(2)) <= 0.4  # was .55rem a side
    assert "position:sticky" in phone  # on a phone the defense column stays in view
    table = page.split('<table class="lb">')[1].split("</table>")[0]
    heads = dict(re.findall(r'<th scope="col" data-type="num" title="([^"]*)">([^<]*)</th>',
                            table)[1:])  # tooltip -> header, after the seed column
    by_header = {h: t for t, h in heads.items()}
    assert by_header["PGD acc (%)"] == ("PGD acc (%): still correct under an L-inf PGD attack "
                                        "(prediction robustness)")
    assert by_header["Adv-Ins. (%)"].startswith("Adv-Ins. (%): Insertion in the order of a map")
    assert "RelEx mask of x_adv" in by_header["Retrieval (%)"]
    assert re.search(r'<th scope="col" data-type="text" title="pareto: [^"]+">flags</th>',
                     table)
    assert '<td class="flags">' in table


def _probe(exe: str, html_file: Path, width: int, cwd: Path) -> dict[str, Any]:
    """Open ``html_file`` in a ``width`` px wide iframe (headless Chromium's window is at
    least 500 px wide) and measure the page: the document's scrollWidth and clientWidth, and
    per table wrapper its scrollWidth and clientWidth, written by a script of the outer page
    (the leaderboard's own CSP stays as it is) into the DOM that --dump-dom prints."""
    outer = cwd / f"probe-{width}.html"
    outer.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><pre id="probe"></pre>'
        f'<iframe id="f" src="{html_file.name}" style="border:0;width:{width}px;'
        'height:1200px"></iframe><script>'
        'document.getElementById("f").addEventListener("load", function () {'
        ' var d = this.contentWindow.document, de = d.documentElement;'
        ' var out = {page: [de.scrollWidth, de.clientWidth], tables: []};'
        ' d.querySelectorAll("div.wide").forEach(function (w) {'
        '  out.tables.push([w.scrollWidth, w.clientWidth]); });'
        ' document.getElementById("probe").textContent = JSON.stringify(out); });'
        "</script></body></html>", encoding="utf-8")
    dom = _browser(exe, "--allow-file-access-from-files", "--window-size=1400,1200",
                   "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
                   "--dump-dom", outer.as_uri(), cwd=cwd).stdout
    found = re.search(r'<pre id="probe">([^<]+)</pre>', dom)
    assert found, f"no measurement in the DOM: {dom[-400:]}"
    import json

    return json.loads(found.group(1))


def test_the_widest_tables_fit_1280px_and_a_phone_page_does_not_scroll(tmp_path: Path) -> None:
    """The published board with every reported row and the intervals under each value (its
    widest cells), figures wider than any window: at 1280 px neither the page nor a table
    scrolls sideways; at 390 px (a phone) the page still does not, a wide table scrolls
    inside its own wrapper."""
    exe = _chromium()
    from matplotlib.figure import Figure

    from xrbench.leaderboard.board import load_board
    from xrbench.plots import figure_png

    board = load_board(None, reported_mode="all")
    wide = Figure(figsize=(20, 2), dpi=100)  # a 2000 px wide figure under every table
    wide.subplots().plot([0, 1], [0, 1])
    png = figure_png(wide)
    html_file = tmp_path / "lb.html"
    html_file.write_text(render_html(board, intervals=True,
                                     figures=[[("wide", png)] for _ in board.tables]),
                         encoding="utf-8")
    assert max(t.count("<th ") for t in html_file.read_text().split('<table class="lb">')[1:]) \
        >= 13  # defense, seed, source, ten metrics, flags
    desk = _probe(exe, html_file, 1280, tmp_path)
    assert desk["page"] == [1280, 1280]
    assert len(desk["tables"]) == len(board.tables)
    assert all(s <= c for s, c in desk["tables"]), desk["tables"]  # no table scrolls
    phone = _probe(exe, html_file, 390, tmp_path)
    assert phone["page"] == [390, 390]  # the page itself never scrolls sideways
    assert any(s > c for s, c in phone["tables"])  # a wide table scrolls in its wrapper
