"""docs/writing-a-defense.md and docs/ci.md stay true: their code blocks run in tests (issue
23). writing-a-defense.md's recipe and loss, registered through the page's entry point, give a
defense that trains (the page once called torch.randn without importing torch)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xrbench import api

DOC = Path(__file__).parents[1] / "docs" / "writing-a-defense.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_writing_a_defense_blocks_run(monkeypatch, tmp_path) -> None:
    from xrbench.registry import defenses

    import sys
    import types

    import tomllib
    from importlib import metadata

    import xrbench.registry as registry_module

    recipe, loss, register = _blocks()
    (toml,) = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    module = types.ModuleType("my_package")  # the package the page's entry point names
    monkeypatch.setitem(sys.modules, "my_package", module)
    ns = module.__dict__
    exec(compile(recipe, f"{DOC}:recipe", "exec"), ns)
    exec(compile(loss, f"{DOC}:loss", "exec"), ns)
    # the built-ins' registration block is shown for reading (its `...` body stands for the
    # class above); a package registers through the page's entry point, loaded here as an
    # installed distribution's would be
    assert '@defenses.register("my_defense"' in register
    defenses.load_plugins()
    monkeypatch.setattr(defenses, "_entries", dict(defenses._entries))
    points = tomllib.loads(toml)["project"]["entry-points"]
    assert list(points) == [defenses.group]
    eps = [metadata.EntryPoint(name, value, defenses.group)
           for name, value in points[defenses.group].items()]

    class _Installed:  # importlib.metadata as the registry sees it, with the page's package
        def __getattr__(self, name: str):
            return getattr(metadata, name)

        @staticmethod
        def entry_points(group: str):
            return eps if group == defenses.group else metadata.entry_points(group=group)

    monkeypatch.setattr(registry_module, "metadata", _Installed())
    monkeypatch.setattr(defenses, "_plugins_loaded", False)
    defenses.load_plugins()
    assert defenses.get("my_defense") is ns["MyDefense"]
    assert ns["MyDefense"].name == "my_defense"  # set from the entry point's name
    trained = api.train("digits", "convnet", "my_defense", overrides={"epochs": "1"},
                        progress=False, cache_root=tmp_path / "cache", device="cpu")
    assert trained.meta["recipe"]["sigma"] == pytest.approx(0.1)
    assert trained.meta["recipe"]["eps"] == pytest.approx(0.3)  # resolved from the card
    assert trained.meta["history"][0]["loss"] > 0


# --- docs/ci.md ---------------------------------------------------------------------------
# Every code block of docs/ci.md runs in a test: the regress examples and the baselines'
# refresh here; the first-time commands, the GitHub Actions job (its steps after the install)
# and the pytest version in tests/test_ci_job.py.

CI_DOC = Path(__file__).parents[1] / "docs" / "ci.md"
ROOT = Path(__file__).parents[1]


def _ci_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", CI_DOC.read_text(), flags=re.S)


def _bash_line(line: str, cwd: Path) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", line],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_ci_md_regress_examples_run_as_written(tmp_path) -> None:
    """docs/ci.md's `xrbench regress` examples, each line run by bash in a folder holding
    `leaderboard/baselines` (a copy of xrbench's own) and `results` (the baselines' entries,
    what re-scoring their checkpoints gives: tests/test_regress_guard.py does that for real):
    each exits 0, the JSON line prints a document, the --update line makes the folder."""
    import json
    import shutil

    (block,) = [b for b in _ci_blocks("bash") if "--format json" in b]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 5 and all(ln.startswith("xrbench regress ") for ln in lines)
    shutil.copytree(ROOT / "leaderboard" / "baselines", tmp_path / "leaderboard" / "baselines")
    shutil.copytree(ROOT / "leaderboard" / "baselines" / "digits", tmp_path / "results" / "digits")
    for line in lines:
        res = _bash_line(line, tmp_path)
        assert res.returncode == 0, f"{line}\n{res.stdout}{res.stderr}"
        if "--format json" in line:
            doc = json.loads(res.stdout)
            assert doc["passed"] is True and len(doc["entries"]) == 7
        elif "--update" not in line:
            mode = "training" if "--mode training" in line else "scoring"
            assert f"regress ({mode} mode): passed" in res.stdout, res.stdout
    made = sorted(p.name for p in (tmp_path / "my-baselines").rglob("*-s0.json"))
    assert len(made) == 7 and "sep_neg-s0.json" in made
    assert len(list((tmp_path / "my-baselines").rglob("*-s0.pt"))) == 7  # checkpoints too


@pytest.mark.slow
def test_ci_md_baseline_refresh_runs_as_written_for_one_defense(tmp_path) -> None:
    """docs/ci.md's refresh of xrbench's own baselines, in a git repository holding a copy of
    `leaderboard/baselines` (make.py writes beside itself) and `.venv/bin/python`: the block
    as written but for one narrowing, `--defenses normal --spread-seeds` appended to make.py
    (all seven defenses and seven spread seeds take about 10 minutes, too long for the test
    suite). The new `normal` entry is judged against the committed one in training mode (the
    checkpoint was trained again), and `git diff --stat` names what changed."""
    import os
    import shutil
    import subprocess
    import sys

    from xrbench.testing import assert_no_regression

    (block,) = [b for b in _ci_blocks("bash") if "leaderboard/baselines/make.py" in b]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert lines == ["nice .venv/bin/python leaderboard/baselines/make.py",
                     "git diff --stat leaderboard/baselines"]
    repo = tmp_path / "xrbench"
    shutil.copytree(ROOT / "leaderboard" / "baselines", repo / "leaderboard" / "baselines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(sys.prefix, repo / ".venv")  # this test's environment, as the checkout's
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.invalid"],
                ["git", "config", "user.name", "t"], ["git", "add", "leaderboard"],
                ["git", "commit", "-qm", "baselines"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    made = _bash_line(lines[0] + " --defenses normal --spread-seeds", repo)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "normal seed 0: " in made.stdout and "review the diff and commit it" in made.stdout
    fresh = repo / "leaderboard" / "baselines" / "digits" / "convnet" / "grad_x_input" / "smoke"
    assert sorted(p.name for p in fresh.iterdir()) == [
        "normal-s0.examples.npz", "normal-s0.json", "normal-s0.pt"]  # the others pruned
    assert_no_regression(ROOT / "leaderboard" / "baselines", fresh / "normal-s0.json",
                         mode="training", only_current=True)
    diff = _bash_line(lines[1], repo)
    assert diff.returncode == 0
    assert "normal-s0.json" in diff.stdout and "sep_neg-s0.json" in diff.stdout  # (deleted)
