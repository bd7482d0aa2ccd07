"""The floors of the house (DESIGN.md) are checked by import-linter, not remembered: the
contracts in pyproject.toml ([tool.importlinter]) hold for the code as installed, and a
planted upward import breaks them.

xrbench installs its top-level folders as subpackages (setuptools ``package-dir``:
``defenses/`` -> ``xrbench.defenses``), a layout import-linter's file walk cannot see in the
working tree, so the test lays the package out as it installs (the ``.py`` files only) in a
temporary folder and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _installed_layout(dest: Path) -> Path:
    """The package's .py files as they install (package-dir mapping), under ``dest``."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for package, folder in cfg["tool"]["setuptools"]["package-dir"].items():
        out = dest.joinpath(*package.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / folder).glob("*.py"):
            shutil.copy2(f, out / f.name)
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    if not LINT.exists():
        pytest.fail("import-linter is not installed: pip install -e '.[dev]' brings it")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the laid-out copy before the install
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_contracts_hold(tmp_path):
    res = _lint(_installed_layout(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    n = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
            ["contracts"])
    assert f"Contracts: {n} kept, 0 broken." in res.stdout


def test_an_upward_import_breaks_a_contract(tmp_path):
    tree = _installed_layout(tmp_path)
    sep = tree / "xrbench" / "defenses" / "sep.py"
    sep.write_text(sep.read_text() + "\n\ndef _planted():\n"
                   "    from xrbench.calibrate import find_calibration  # up a floor\n"
                   "    return find_calibration\n")
    board = tree / "xrbench" / "leaderboard" / "board.py"
    board.write_text(board.read_text() + "\n\ndef _planted():\n"
                     "    from .render import render_markdown  # board below render\n"
                     "    return render_markdown\n")
    res = _lint(tree)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "xrbench.defenses is not allowed to import xrbench.calibrate" in res.stdout
    assert "xrbench.defenses.sep -> xrbench.calibrate" in res.stdout
    assert "xrbench.leaderboard.board is not allowed to import xrbench.leaderboard.render" \
        in res.stdout
