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
    curves and a one-pair gallery, drawn from the entries' per-example files."""
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
