"""The installed example plugin (examples/xrbench-example-defense) seen through the installed
`xrbench` console script, as a user would run it. CI installs the plugin (README's test
command); elsewhere the test is skipped unless the plugin is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from xrbench.leaderboard.schema import validate_entry

XRBENCH = Path(sys.executable).parent / "xrbench"


def _installed() -> bool:
    try:
        metadata.distribution("xrbench-example-defense")
    except metadata.PackageNotFoundError:
        return False
    return True


if not _installed():
    if os.environ.get("CI"):
        pytest.fail("CI must install examples/xrbench-example-defense (README test command)",
                    pytrace=False)
    pytest.skip("examples/xrbench-example-defense is not installed", allow_module_level=True)


def _run(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    env.pop("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([str(XRBENCH), *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_plugin_is_listed(tmp_path):
    res = _run("list", "defenses", env_extra={"XRBENCH_CACHE": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert {"normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian",
            "gaussian_aug"} <= set(lines)
    assert "[plugin xrbench-example-defense]" in lines["gaussian_aug"]


def test_plugin_defense_evaluates_to_a_valid_entry(tmp_path):
    out = tmp_path / "results"
    res = _run("evaluate", "--defense", "gaussian_aug", "--profile", "smoke", "--epochs", "2",
               "--out", str(out), "--quiet", "--device", "cpu",
               env_extra={"XRBENCH_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    path = out / "digits" / "convnet" / "grad_x_input" / "smoke" / "gaussian_aug-s0.json"
    assert f"wrote: {path}" in res.stdout
    entry = json.loads(path.read_text())
    validate_entry(entry)
    assert entry["defense"]["name"] == "gaussian_aug"
    assert entry["defense"]["source"] == "plugin xrbench-example-defense"
    assert entry["defense"]["recipe"]["sigma"] == 0.1 and entry["defense"]["recipe"]["epochs"] == 2
    # its distribution and installed version, and the --epochs 2 recipe is not the reference
    assert entry["defense"]["distribution"] == {
        "name": "xrbench-example-defense",
        "version": metadata.version("xrbench-example-defense")}
    assert entry["defense"]["reference"] is False
    assert entry["defense"]["recipe_diff"] == {"epochs": {"value": 2, "reference": 25}}
