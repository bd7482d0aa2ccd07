"""The installed example attack plugin (examples/xrbench-example-attack) joins the worst-case
ensemble (PROTOCOL 5.8) through the installed `xrbench` console script, as a user would run
it. CI installs the plugin (README's test command); elsewhere the test is skipped unless it is
installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.schema import read_entry

XRBENCH = Path(sys.executable).parent / "xrbench"
DIST = "xrbench-example-attack"


def _installed() -> bool:
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


if not _installed():
    if os.environ.get("CI"):
        pytest.fail(f"CI must install examples/{DIST} (README test command)", pytrace=False)
    pytest.skip(f"examples/{DIST} is not installed", allow_module_level=True)


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XRBENCH_CACHE": str(cache)}
    env.pop("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([str(XRBENCH), *args], capture_output=True, text=True, env=env,
                          timeout=900, check=False)


def test_the_plugin_attack_is_listed(tmp_path: Path) -> None:
    res = _run("list", "attacks", cache=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {ln.split()[0]: ln for ln in res.stdout.splitlines()}
    assert {"dombrowski", "smoothed", "signed", "restart", "adam_lr10"} <= set(rows)
    assert f"[plugin {DIST}]" in rows["adam_lr10"]


def test_a_plugin_attack_joins_an_evaluation(fixed_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run("evaluate", "--defense", "normal", "--profile", "smoke", "--checkpoint",
               str(fixed_checkpoint), "--device", "cpu", "--out", str(out),
               "--attacks", "adam_lr10", cache=tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "the worst-case ensemble adds attacks: adam_lr10" in res.stdout
    path = next(out.rglob("normal-s0.json"))
    e = read_entry(path)
    params = e["protocol"]["parameters"]["ensemble"]
    assert params["attacks"] == ["dombrowski", "smoothed", "signed", "restart", "adam_lr10"]
    assert params["extra_attacks"]["adam_lr10"] == {
        "version": "0.1.0", "source": f"plugin {DIST}",
        "distribution": {"name": DIST, "version": metadata.version(DIST)}}
    assert e["defense"]["reference"] is False
    shares = {k: v["win_share"]["value"] for k, v in e["metrics"]["ensemble"]["attacks"].items()}
    assert set(shares) == set(params["attacks"])
    # every pair is won by one attack, or by none where no candidate kept the class
    none = e["metrics"]["ensemble"]["no_candidate"] / e["subset"]["n_pairs"]
    assert sum(shares.values()) + none == pytest.approx(1.0)
    arrays = read_examples(path, e)
    worst = arrays["ensemble/expl_end_worst"]
    for name in params["attacks"]:  # at most each attack's value where it kept the class
        kept = arrays[f"ensemble/kept/{name}"].astype(bool)
        assert (worst[kept] <= arrays[f"ensemble/expl_end/{name}"][kept]).all(), name
    assert np.isclose(e["metrics"]["expl_end_worst"]["value"], worst.mean())
    json.dumps(e)  # plain JSON


def test_an_unknown_attack_is_one_line(tmp_path: Path) -> None:
    res = _run("evaluate", "--defense", "normal", "--profile", "smoke", "--attacks", "nope",
               "--out", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "unknown attack 'nope'" in res.stderr and "adam_lr10" in res.stderr
    assert not (tmp_path / "out").exists()
