"""The users' CI job of docs/ci.md, run locally as a script on the example plugin defense.

The job's shell steps are read from the YAML in docs/ci.md (the install step is skipped: the
plugin is installed already, and it would need the network) and run with bash in a temporary
"user repository" that holds a copy of the plugin's package, found first on PYTHONPATH as
`pip install .` would make it (a git repository). The baselines are made and committed once
with the commands docs/ci.md gives for that; then the job passes, and so does the page's pytest
version of it; then the user's defense file is edited (the noise level's default, 0.1 -> 0.5)
and the same job, on a fresh runner's empty cache, fails naming the metric that regressed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_plugin_cli import _installed  # the example plugin is installed (README step 2)

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "ci.md"
PLUGIN = ROOT / "examples" / "xrbench-example-defense" / "xrbench_example_defense"




def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _job() -> tuple[dict[str, str], list[str]]:
    """(job environment, the run scripts of its steps after the install step)."""
    (text,) = [b for b in _blocks("yaml") if "jobs:" in b]
    (job,) = yaml.safe_load(text)["jobs"].values()
    scripts = [s["run"] for s in job["steps"] if "run" in s
               and not s.get("name", "").lower().startswith("install")]
    return {k: str(v) for k, v in (job.get("env") or {}).items()}, scripts


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # as GitHub Actions runs a `run:` step: bash -e -o pipefail
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def _env(repo: Path, runner_temp: Path, job_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                  f"{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(repo)}  # the repository's own copy of the defense comes first
    env.pop("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    for k, v in job_env.items():
        env[k] = v.replace("${{ runner.temp }}", str(runner_temp))
    return env


@pytest.mark.skipif(not _installed(), reason="examples/xrbench-example-defense not installed")
def test_the_documented_job_passes_then_fails_after_a_planted_change(tmp_path):
    job_env, steps = _job()
    assert any("xrbench evaluate" in s for s in steps)
    assert any("xrbench regress" in s for s in steps)
    (first_time,) = [b for b in _blocks("bash") if "--update" in b and "git add" in b]

    repo = tmp_path / "repo"
    shutil.copytree(PLUGIN, repo / PLUGIN.name, ignore=shutil.ignore_patterns("__pycache__"))
    # the user's repository, where the baselines get committed
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.invalid"],
                ["git", "config", "user.name", "ci"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    # the baselines, made once as docs/ci.md says, and committed: the block as written
    made = _bash(first_time, repo, _env(repo, tmp_path / "runner0", job_env))
    assert made.returncode == 0, made.stdout + made.stderr
    assert list((repo / "xrbench-baselines").rglob("gaussian_aug-s0.json"))
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, check=True, capture_output=True,
                             text=True).stdout.split()
    assert any(t.endswith("gaussian_aug-s0.json") for t in tracked), tracked
    shutil.rmtree(repo / "results")

    def run_job(runner: Path) -> tuple[int, str]:
        env = _env(repo, runner, job_env)
        out = ""
        for script in steps:
            res = _bash(script, repo, env)
            out += res.stdout + res.stderr
            if res.returncode:
                return res.returncode, out
        return 0, out

    code, out = run_job(tmp_path / "runner1")
    assert code == 0, out
    assert "regress (training mode): passed" in out

    # "As a pytest test": the page's test file, run by pytest in the user's repository, on
    # the job's cache of the run above (what its evaluate needs is there: seconds, not a
    # training)
    (guard,) = [b for b in _blocks("python") if "assert_no_regression" in b]
    (repo / "test_xrbench_guard.py").write_text(guard)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_xrbench_guard.py"], cwd=repo, capture_output=True, text=True,
                         env=_env(repo, tmp_path / "runner1", job_env), timeout=600,
                         check=False)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr

    # the planted change: the noise level's default in the user's defense file
    source = repo / PLUGIN.name / "__init__.py"
    text = source.read_text()
    assert "sigma: float = 0.1 " in text
    source.write_text(text.replace("sigma: float = 0.1 ", "sigma: float = 0.5 "))
    shutil.rmtree(repo / "results")
    code, out = run_job(tmp_path / "runner2")  # a fresh runner: an empty cache
    assert code == 1, out
    assert "note: recipe differs: sigma" in out
    failing = [line.split()[0] for line in out.splitlines() if "regressed FAIL" in line]
    assert "clean_acc" in failing, out
