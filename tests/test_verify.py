"""``xrbench verify``: an external attack's images checked on an entry's own checkpoint
(PROTOCOL 5.8), through the real command line: a good submission made by a script from one of
the ensemble's attacks is accepted with the right per-pair numbers; bad ones are refused with
one line and exit 2, the entry untouched."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from xrbench import api
from xrbench.attacks import ensemble as ens
from xrbench.cli.app import main
from xrbench.explainers import get_explainer
from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.schema import read_entry


@pytest.fixture(scope="module")
def scored(fixed_checkpoint: Path, tmp_path_factory) -> Path:
    """A smoke entry of the fixed checkpoint, its weights beside it (as published)."""
    root = tmp_path_factory.mktemp("verify")
    res = api.evaluate("normal", profile="smoke", checkpoint=str(fixed_checkpoint),
                       out=root / "results", cache_root=root / "cache", progress=False,
                       device="cpu")
    shutil.copy(fixed_checkpoint, res.path.with_name("normal-s0.pt"))
    return res.path


def _submission(entry_path: Path, out: Path) -> np.ndarray:
    """What an external attacker's script does: run an attack of its own (here ``signed`` with
    three times the protocol's iterations) on every pair of the entry, save x_adv."""
    from xrbench.verify import _model_and_images

    entry = read_entry(entry_path)
    net, images = _model_and_images(entry, entry_path, None, torch.device("cpu"), None, None)
    pairs = torch.from_numpy(read_examples(entry_path, entry)["ensemble/pairs"])
    budget = ens.Budget(iterations=60, lr=5e-3, eps_pgd=0.3, seed=1)
    x_adv = ens.signed(net, get_explainer(entry["explainer"]["name"]), images[pairs[:, 0]],
                       images[pairs[:, 1]], pairs=pairs, budget=budget).x_adv.numpy()
    np.savez(out, x_adv=x_adv)
    return x_adv


def test_verify_accepts_a_scripted_submission(scored: Path, tmp_path: Path, capsys) -> None:
    sub = tmp_path / "sub.npz"
    _submission(scored, sub)
    before = scored.read_bytes()
    assert main(["verify", str(scored), str(sub), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "lowered the worst case of" in printed
    assert scored.read_bytes() == before  # the published entry is untouched
    new_path = Path(printed.strip().splitlines()[-1].split("wrote: ", 1)[1])
    new = read_entry(new_path)
    best = new["metrics"]["ensemble"]["best_known"]
    assert best["submissions"][0]["sha256"] == hashlib.sha256(sub.read_bytes()).hexdigest()
    arrays = read_examples(new_path, new)
    worst = arrays["ensemble/expl_end_worst"]
    known = arrays["ensemble/expl_end_best_known"]
    assert (known <= worst).all()
    improved = known < worst
    assert improved.sum() == best["submissions"][0]["pairs_improved"] > 0
    assert best["expl_end"]["value"] == pytest.approx(float(known.mean()), rel=1e-9)
    # the untouched metrics are the entry's
    assert new["metrics"]["expl_end_worst"] == read_entry(scored)["metrics"]["expl_end_worst"]


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_verify_refuses_bad_submissions(scored: Path, tmp_path: Path, capsys) -> None:
    entry = read_entry(scored)
    p, c, s = len(read_examples(scored, entry)["ensemble/pairs"]), 1, 8
    good = np.full((p, c, s, s), 0.5, dtype=np.float32)
    nan = good.copy()
    nan[3, 0, 2, 2] = np.nan
    obj = np.empty(p, dtype=object)
    bomb = tmp_path / "bomb.npz"  # declares far more pixels than the entry's pairs
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_adv.npy", bytes(50 * good.nbytes))  # a few KB compressed
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    cases = [
        ([_write(tmp_path / "few.npz", x_adv=good[:-1])], "shape"),
        ([_write(tmp_path / "shape.npz", x_adv=good[:, :, :4])], "shape"),
        ([_write(tmp_path / "big.npz", x_adv=good + 0.6)], "outside [0, 1]"),
        ([_write(tmp_path / "neg.npz", x_adv=good - 1.0)], "outside [0, 1]"),
        ([_write(tmp_path / "nan.npz", x_adv=nan)], "NaN"),
        ([_write(tmp_path / "int.npz", x_adv=(good * 255).astype(np.uint8))], "float32"),
        ([_write(tmp_path / "two.npz", x_adv=good, extra=good[:1])], "exactly one array"),
        ([_write(tmp_path / "obj.npz", x_adv=obj)], "x_adv"),
        ([bomb], "more than"),
        ([tmp_path / "missing.npz"], "not found"),
        ([_write(tmp_path / "ok.npz", x_adv=good), "--checkpoint", str(other)],
         "does not match"),
    ]
    files = {f: f.read_bytes() for f in scored.parent.iterdir()}
    for args, message in cases:
        code = main(["verify", str(scored), str(args[0]), *map(str, args[1:]),
                     "--out", str(tmp_path / "out"), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and message in err, (args, err)
    assert {f: f.read_bytes() for f in scored.parent.iterdir()} == files
    assert not (tmp_path / "out").exists()
