"""The project's own regression guard, end to end (docs/ci.md).

- Scoring mode: the seven stored smoke checkpoints (leaderboard/baselines) are scored again
  and ``xrbench regress leaderboard/baselines <fresh>`` passes.
- Planted scoring mutations (PGD's eps forced to 0 inside the accuracy stage; RelEx running
  one iteration fewer) score the same checkpoint again and ``regress`` exits 1 naming the
  metric. The mutations keep every recorded protocol parameter as it was: the code lies, the
  entry does not know, only the numbers can tell.
- Training mode: ``sep_pos`` retrained with its reference smoke recipe passes; retrained with
  SEP's lambda sign flipped inside the loss, it fails naming Expl@start and RPS.
  (Flipping ``sep_neg``'s calibrated -300 is within the seed noise of the 3-epoch smoke
  recipe; sep_pos's 10000 is not.)

Each mutated run scores in a cache without the mutated stage's outputs (a cached, unmutated
result would otherwise be reused); the other stages' cached outputs are copied from the
re-scoring run, which keeps these tests to seconds each.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from xrbench import api
from xrbench.cli import main
from xrbench.leaderboard import regress as rg

pytestmark = pytest.mark.slow

BASELINES = Path(__file__).parents[1] / "leaderboard" / "baselines"
SMOKE = BASELINES / "digits" / "convnet" / "grad_x_input" / "smoke"


def _score_stored(entry: Path, out: Path, cache: Path) -> Path:
    """Score the checkpoint stored beside a baseline entry, as the baseline did."""
    e = rg.load_side(entry, with_examples=False)[0][0].entry
    res = api.evaluate(e["defense"]["name"], e["dataset"]["name"], e["model"]["name"],
                       e["explainer"]["name"], e["protocol"]["profile"], seed=e["seed"],
                       checkpoint=str(rg.checkpoint_beside(entry)),
                       checkpoint_sha256=e["checkpoint"]["sha256"], out=out,
                       progress=False, cache_root=cache, device="cpu")
    return res.path


@pytest.fixture(scope="module")
def rescored(tmp_path_factory) -> tuple[Path, Path]:
    """(stage cache, results folder) of the seven stored checkpoints scored again, by
    docs/ci.md's block that does it by hand (run by bash from a folder that sees the
    repository's `leaderboard/`), its closing `xrbench regress` included."""
    import os
    import re
    import subprocess
    import sys

    doc = (Path(__file__).parents[1] / "docs" / "ci.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
                if "for d in normal mat trades" in b]
    assert sorted(re.search(r"for d in ([a-z0-9_ ]+);", block).group(1).split()) == sorted(
        p.name[:-len("-s0.json")] for p in SMOKE.glob("*-s0.json"))
    root = tmp_path_factory.mktemp("rescored")
    (root / "leaderboard").symlink_to(BASELINES.parent)
    env = {**os.environ, "XRBENCH_CACHE": str(root / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", block],
                         cwd=root, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "regress (scoring mode): passed; entries: 7 compared" in res.stdout
    return root / "cache", root / "results"


def _cache_without(cache: Path, dest: Path, *stages: str) -> Path:
    """A copy of the stage cache without the outputs of ``stages`` (and its locks)."""
    shutil.copytree(cache / "stages", dest / "stages",
                    ignore=lambda d, names: [n for n in names
                                             if any(n.startswith(f"{s}-") for s in stages)])
    return dest


def _regress(capsys, *argv: str) -> tuple[int, str]:
    code = main(["regress", "--show", "all", *argv])  # every row: the tests read ok rows too
    return code, capsys.readouterr().out


def _row(out: str, metric: str) -> str:
    return next(line for line in out.splitlines() if line.split()[:1] == [metric])


def test_rescored_checkpoints_pass_scoring_mode(rescored, capsys):
    _, results = rescored
    code, out = _regress(capsys, str(BASELINES), str(results))
    assert code == 0, out
    assert "regress (scoring mode): passed; entries: 7 compared, 0 missing, 0 extra" in out
    for defense in ("normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian"):
        assert f"smoke/{defense}-s0: compared [ok]" in out
    assert _row(out, "expl_end").split()[-1] == "ok"


def test_pgd_eps_zero_fails_naming_pgd_accuracy(rescored, tmp_path, monkeypatch, capsys):
    from xrbench.metrics import accuracy

    real = accuracy.pgd
    monkeypatch.setattr(accuracy, "pgd", lambda model, x, y, eps, **kw: real(model, x, y, 0.0,
                                                                             **kw))
    cache = _cache_without(rescored[0], tmp_path / "cache", "accuracy")
    path = _score_stored(SMOKE / "mat-s0.json", tmp_path / "out", cache)
    code, out = _regress(capsys, str(SMOKE / "mat-s0.json"), str(path))
    assert code == 1
    row = _row(out, "pgd_acc")
    assert "improved FAIL" in row  # the attack got weaker: PGD accuracy "improves"
    assert "mat-s0: pgd_acc improved" in out.splitlines()[-1]
    assert _row(out, "clean_acc").split()[-1] == "ok"  # the clean half did not move
    assert "protocol parameters differ" not in out  # the entry records the same eps


def test_relex_one_iteration_fewer_fails_naming_retrieval(rescored, tmp_path, monkeypatch,
                                                          capsys):
    from xrbench.metrics import retrieval

    real = retrieval.relex_mask

    @functools.wraps(real)  # the same signature, so the same recorded parameters
    def one_fewer(*args, iterations=50, **kw):
        return real(*args, iterations=iterations - 1, **kw)

    monkeypatch.setattr(retrieval, "relex_mask", one_fewer)
    cache = _cache_without(rescored[0], tmp_path / "cache", "retrieval")
    path = _score_stored(SMOKE / "mat-s0.json", tmp_path / "out", cache)
    code, out = _regress(capsys, str(SMOKE / "mat-s0.json"), str(path), "--format", "json")
    assert code == 1
    report = json.loads(out)
    failed = [m["metric"] for m in report["entries"][0]["metrics"] if m["failed"]]
    # the masks moved, and with them the random stream the stage's later PGD draws from:
    # every failing row is a retrieval rate, no other stage moved
    assert any(m.startswith("retrieval/relex_") for m in failed), out
    assert all(m.startswith("retrieval/") for m in failed), failed
    assert not any("protocol parameters differ" in n for n in report["entries"][0]["notes"])


def test_retrained_sep_pos_passes_training_mode(rescored, tmp_path, capsys):
    cache = _cache_without(rescored[0], tmp_path / "cache")
    res = api.evaluate("sep_pos", profile="smoke", out=tmp_path / "out", progress=False,
                       cache_root=cache, device="cpu")
    code, out = _regress(capsys, str(SMOKE / "sep_pos-s0.json"), str(res.path), "--mode",
                         "training", "--spread", str(BASELINES / "spread"))
    assert code == 0, out
    assert "regress (training mode): passed" in out


def test_flipped_sep_lambda_fails_training_mode_naming_expl_start(rescored, tmp_path,
                                                                  monkeypatch, capsys):
    from xrbench.defenses.sep import Sep

    real = Sep.weight
    monkeypatch.setattr(Sep, "weight", lambda self: -real(self))  # w * lambda -> -w * lambda
    cache = _cache_without(rescored[0], tmp_path / "cache")
    res = api.evaluate("sep_pos", profile="smoke", out=tmp_path / "out", progress=False,
                       cache_root=cache, device="cpu")
    assert res.entry["defense"]["recipe"]["lambda_"] > 0  # the recipe still says sep_pos
    code, out = _regress(capsys, str(SMOKE / "sep_pos-s0.json"), str(res.path), "--mode",
                         "training", "--spread", str(BASELINES / "spread"))
    assert code == 1, out
    # sep_pos with lambda -10000 is a far stronger sep_neg than the calibrated -300: its
    # explanations sharpen (Expl@start x2.7, beyond the 6-sd band by 1.2 band widths), its
    # maps get noisier (RPS cosine at 8/255 0.997 -> 0.975, 15 band widths beyond) ...
    assert "changed FAIL" in _row(out, "expl_start")
    assert "regressed FAIL" in _row(out, "rps/cosine/8/255")
    # ... and Expl@end rises: better by the protocol's direction, so reported, not failed
    assert _row(out, "expl_end").split()[-1] in ("improved", "ok")
