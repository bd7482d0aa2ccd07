"""A table of bad inputs, each run through the real command line in a subprocess: exit code
2, exactly one line on stderr naming the problem, no traceback, and the user's results and
cache files byte for byte unchanged. Every row fails before any training or scoring starts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import torch

from xrbench.data import load_dataset
from xrbench.models import create_model


class _RunsCode:
    """Unpickling this runs a shell command: weights_only=True must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _setup(root: Path) -> dict[str, Path]:
    """User files, good and bad, under ``root``."""
    f: dict[str, Path] = {}
    root.mkdir(parents=True)
    f["empty"] = root / "empty"
    f["empty"].mkdir()
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("not a folder\n")
    f["dir_ckpt"] = root / "weights_dir.pt"
    f["dir_ckpt"].mkdir()
    f["garbage"] = root / "garbage.pt"
    f["garbage"].write_bytes(b"this is not a torch file")
    f["bomb"] = root / "bomb.pt"
    f["bomb"].write_bytes(pickle.dumps({"w": _RunsCode()}))
    lenet = create_model("lenet", load_dataset("digits").card)
    f["lenet"] = root / "lenet.pt"
    torch.save(lenet.state_dict(), f["lenet"])
    for name, sidecar in (("latin1", b"{\"sha256\": \"\xe9\"}"), ("listside", b"[1, 2]")):
        f[name] = root / f"{name}.pt"
        torch.save(lenet.state_dict(), f[name])
        f[name].with_suffix(".json").write_bytes(sidecar)
    nan_state = create_model("convnet", load_dataset("digits").card).state_dict()
    next(v for v in nan_state.values() if v.is_floating_point()).fill_(float("nan"))
    f["nan_weights"] = root / "nan.pt"
    torch.save(nan_state, f["nan_weights"])
    f["dir_json"] = root / "entries_with_a_folder"
    (f["dir_json"] / "x.json").mkdir(parents=True)
    f["latin1_entry"] = root / "entries_latin1"
    f["latin1_entry"].mkdir()
    (f["latin1_entry"] / "e.json").write_bytes(b"{\"defense\": \"caf\xe9\"}")
    f["existing_md"] = root / "board.md"
    f["existing_md"].write_text("my notes\n")
    f["existing_manifest"] = root / "manifest.json"
    f["existing_manifest"].write_text("{}\n")
    folder = root / "imgs"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True)
            (folder / split / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    f["imgs"] = folder
    from PIL import Image

    for name, per_class in (("if_empty", 0), ("if_small", 3)):
        for split in ("train", "val"):
            for cls, colour in (("a", (250, 0, 0)), ("b", (0, 250, 0))):
                (root / name / split / cls).mkdir(parents=True)
                for i in range(per_class):
                    Image.new("RGB", (8, 8), colour).save(root / name / split / cls / f"{i}.png")
        f[name] = root / name
    return f


# (id, argv given the files, a word the one-line message must contain)
CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("seed-negative", lambda f: ["evaluate", "--seed", "-1"], "seed"),
    ("seed-not-int", lambda f: ["evaluate", "--seed", "abc"], "--seed"),
    ("batch-size-0", lambda f: ["evaluate", "--set", "batch_size=0"], "batch_size"),
    ("lr-negative", lambda f: ["evaluate", "--set", "lr=-1"], "'lr'"),
    ("lr-nan", lambda f: ["train", "--set", "lr=nan"], "finite"),
    ("epochs-0", lambda f: ["evaluate", "--epochs", "0"], "epochs"),
    ("epochs-negative", lambda f: ["train", "--epochs", "-3"], "epochs"),
    ("eps-above-1", lambda f: ["train", "--defense", "mat", "--set", "eps=2"], "eps"),
    ("unknown-field", lambda f: ["train", "--set", "nosuch=1"], "nosuch"),
    ("set-without-value", lambda f: ["evaluate", "--set", "lambda_"], "KEY=VALUE"),
    ("set-not-a-number", lambda f: ["train", "--set", "lr=fast"], "'lr'"),
    ("unknown-defense", lambda f: ["evaluate", "--defense", "nosuch"], "valid names"),
    ("unknown-model", lambda f: ["evaluate", "--model", "nosuch"], "valid names"),
    ("unknown-explainer", lambda f: ["evaluate", "--explainer", "nosuch"], "valid names"),
    ("unknown-dataset", lambda f: ["evaluate", "--dataset", "nosuch"], "valid names"),
    ("unknown-profile", lambda f: ["evaluate", "--profile", "nosuch"], "invalid choice"),
    ("unknown-device", lambda f: ["evaluate", "--device", "tpu"], "device"),
    ("missing-data", lambda f: ["evaluate", "--dataset", "cifar10", "--data-dir",
                                str(f["empty"])], "cifar"),
    ("checkpoint-missing", lambda f: ["evaluate", "--checkpoint", "/nonexistent/w.pt"],
     "not found"),
    ("checkpoint-folder", lambda f: ["evaluate", "--checkpoint", str(f["dir_ckpt"])], "folder"),
    ("checkpoint-garbage", lambda f: ["evaluate", "--checkpoint", str(f["garbage"])],
     "cannot be read"),
    ("checkpoint-runs-code", lambda f: ["evaluate", "--checkpoint", str(f["bomb"])],
     "cannot be read"),
    ("checkpoint-wrong-model", lambda f: ["evaluate", "--checkpoint", str(f["lenet"])],
     "does not fit"),
    ("checkpoint-wrong-sha", lambda f: ["evaluate", "--checkpoint", str(f["lenet"]),
                                        "--model", "lenet", "--checkpoint-sha256", "abc"],
     "the sha256 you gave"),
    ("sidecar-not-utf8", lambda f: ["evaluate", "--checkpoint", str(f["latin1"]),
                                    "--model", "lenet"], "UTF-8"),
    ("sidecar-a-list", lambda f: ["evaluate", "--checkpoint", str(f["listside"]),
                                  "--model", "lenet"], "list"),
    ("out-is-a-file", lambda f: ["evaluate", "--out", str(f["a_file"])], "is a file"),
    ("out-under-a-file", lambda f: ["evaluate", "--out", str(f["a_file"] / "sub")], "is a file"),
    ("out-unwritable", lambda f: ["evaluate", "--out", "/proc/xrbench-results"],
     "cannot write"),
    ("corrupt-image", lambda f: ["train", "--dataset", f"imagefolder:{f['imgs']}",
                                 "--epochs", "1", "--quiet"], "broken.png"),
    ("leaderboard-folder-named-json", lambda f: ["leaderboard", "--results",
                                                 str(f["dir_json"])], "no entries"),
    ("leaderboard-not-utf8", lambda f: ["leaderboard", "--results", str(f["latin1_entry"])],
     "UTF-8"),
    ("leaderboard-missing", lambda f: ["leaderboard", "--results", "/nonexistent"],
     "not found"),
    ("leaderboard-no-overwrite", lambda f: ["leaderboard", "--output",
                                            str(f["existing_md"])], "--force"),
    ("subset-no-overwrite", lambda f: ["subset", "--out", str(f["existing_manifest"])],
     "--force"),
    # issue 21: typed parsing of every CLI and recipe value
    ("calibrate-epochs-0", lambda f: ["calibrate", "--epochs", "0"], "between 1 and"),
    ("set-epochs-none", lambda f: ["evaluate", "--set", "epochs=none"], "cannot be none"),
    ("set-batch-size-none", lambda f: ["train", "--set", "batch_size=null"], "cannot be none"),
    ("seed-beyond-64-bits", lambda f: ["evaluate", "--seed", str(2 ** 64)], "between 0 and"),
    ("compare-resamples-huge", lambda f: ["compare", "a.json", "b.json", "--resamples",
                                          "100000000000"], "--resamples"),
    ("sweep-seeds-huge", lambda f: ["sweep", "--defenses", "normal", "--seeds",
                                    "0-100000000000", "--dry-run"], "at most 10000 seeds"),
    ("shards-0", lambda f: ["evaluate", "--shards", "0"], "--shards"),
    ("unknown-attack", lambda f: ["evaluate", "--attacks", "nosuch"], "unknown attack"),
    ("imagefolder-no-images", lambda f: ["evaluate", "--dataset", f"imagefolder:{f['if_empty']}"],
     "Found no valid file"),
    ("imagefolder-too-small", lambda f: ["evaluate", "--dataset", f"imagefolder:{f['if_small']}",
                                         "--profile", "smoke"], "test split has 6 images"),
    ("extractor-weights-garbage", lambda f: ["evaluate", "--extractor-weights",
                                             str(f["garbage"])], "cannot be read"),
    ("checkpoint-nan-weights", lambda f: ["evaluate", "--checkpoint", str(f["nan_weights"])],
     "NaN or infinite weights"),
    ("verify-missing-entry", lambda f: ["verify", "/nonexistent/e.json", "/nonexistent/s.npz",
                                        "--out", "x"], "not found"),
]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    files = _setup(root / "user")
    cache, results = root / "cache", root / "results"
    (cache / "stages").mkdir(parents=True)
    (cache / "stages" / "rps-0123.pt").write_bytes(b"a cached stage output")
    (results / "digits").mkdir(parents=True)
    (results / "digits" / "normal-s0.json").write_text("{\"an\": \"entry\"}\n")
    env = {**os.environ, "XRBENCH_CACHE": str(cache), "XRBENCH_RESULTS": str(results),
           "XRBENCH_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    before = {"cache": _digest(cache), "results": _digest(results), "user": _digest(root / "user")}

    def run(case):
        argv = case[1](files)
        return subprocess.run([sys.executable, "-m", "xrbench.cli", *argv], env=env,
                              cwd=root / "user", capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = dict(zip([c[0] for c in CASES], pool.map(run, CASES)))
    after = {"cache": _digest(cache), "results": _digest(results), "user": _digest(root / "user")}
    return out, before, after, root


def test_the_table_is_large_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(runs, case):
    proc = runs[0][case[0]]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("xrbench: error: "), proc.stderr
    assert case[2] in lines[0]


def test_nothing_the_user_had_changed(runs):
    _, before, after, root = runs
    # every file is as it was, none is gone; the only new files are empty locks in the cache
    # and the content index of an image folder read (its files' sha256, imagefolder-index/)
    for place in before:
        new = set(after[place]) - set(before[place])
        assert all(p.startswith(("locks/", "imagefolder-index/")) for p in new), new
        assert {p: after[place][p] for p in before[place]} == before[place]
    assert not (root / "user" / "pwned").exists()  # the pickle's command never ran
