"""Every dataset end to end through the command line (issue 12, item 5).

For each of mnist, fashion_mnist, cifar10, cifar100, tinyimagenet and ``imagefolder:PATH`` a
test writes a small stand-in in the real on-disk format (:mod:`xrbench.standins`, classes
made learnable) and runs ``xrbench evaluate`` through ``xrbench.cli.main`` with
``--profile smoke --epochs 1``, each with its own cache and results folder, then checks the
entry against the schema, a clean accuracy well above chance and what the run recorded
about the data and the subset.

The headline command (``xrbench evaluate --defense sep_neg --dataset cifar100 --profile
smoke --epochs 1``) runs as it is, on 256 training and 100 test images. The five ``mat``
runs check the data paths, so to keep this file within a few minutes on a 2-core CPU they
use 128 training and 40 test images with ``--set batch_size=16`` (8 steps in the one epoch:
enough to learn the stand-in's classes) and shrink smoke in-process
(:data:`SHORT_SMOKE`: 10 subset images and tiny attack budgets, recorded in their entries
like any protocol parameter). tinyimagenet and the image folder (64 x 64) build their subset
with the ImageNet-weights extractor from a file (randomly initialised here: nothing is
downloaded), which is also what they test; the others train smoke's 1-epoch extractor.

Only torchvision's md5 check of the CIFAR files is replaced (stand-ins are not the published
files); all parsing is the libraries' own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from xrbench import standins
from xrbench.cli import main

#: smoke, shrunk for the five data-path runs (the headline run keeps smoke as it is)
SHORT_SMOKE = {"per_cluster": 1, "manipulation_iterations": 2, "relex_iterations": 2,
               "relex_samples": 2, "adv_insertion_iterations": 2, "retrieval_pgd_steps": 2,
               "rps_draws": 2}
#: stand-in sizes of the data-path runs, and the flag that makes one epoch enough there
N_TRAIN, N_TEST, SMALL_BATCH = 128, 40, ("--set", "batch_size=16")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A cache, a data folder and a results folder of this test's own; offline; the CIFAR
    md5 check replaced by a file-exists check."""
    import torchvision.datasets.cifar as tv_cifar

    dirs = {k: tmp_path / k for k in ("cache", "data", "out")}
    monkeypatch.setenv("XRBENCH_CACHE", str(dirs["cache"]))
    monkeypatch.setenv("XRBENCH_OFFLINE", "1")
    monkeypatch.setenv("XRBENCH_STANDIN_DATA", "1")  # small files in the real formats
    monkeypatch.delenv("XRBENCH_DATA", raising=False)
    monkeypatch.setattr(tv_cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))
    return dirs


def _short_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    from xrbench import protocol

    monkeypatch.setitem(protocol.PROFILES, "smoke",
                        dataclasses.replace(protocol.PROFILES["smoke"], **SHORT_SMOKE))


def _evaluate(capsys: pytest.CaptureFixture[str], env: dict[str, Path], defense: str,
              dataset: str, *extra: str) -> tuple[dict[str, Any], str]:
    """``xrbench evaluate`` through the CLI; (the entry written, stdout)."""
    rc = main(["evaluate", "--defense", defense, "--dataset", dataset, "--profile", "smoke",
               "--epochs", "1", "--data-dir", str(env["data"]), "--out", str(env["out"]),
               "--quiet", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    written = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("wrote: ")]
    assert len(written) == 1, out
    return json.loads(Path(written[0]).read_text()), out


def _check_entry(entry: dict[str, Any], name: str, num_classes: int, defense: str,
                 n_test: int = N_TEST, per_cluster: int = 1) -> None:
    """Schema-valid; the dataset, profile and subset it names; clean accuracy well above
    chance (the stand-ins use 10 of the classes: above twice chance among those 10)."""
    n = 10 * per_cluster
    from xrbench.leaderboard.schema import validate_entry

    validate_entry(entry)
    assert entry["dataset"]["name"] == name and entry["dataset"]["num_classes"] == num_classes
    assert entry["defense"]["name"] == defense and entry["protocol"]["profile"] == "smoke"
    assert entry["defense"]["recipe"]["epochs"] == 1
    assert entry["subset"]["n_images"] == n and entry["subset"]["n_pairs"] == n * (n - 1)
    assert entry["metrics"]["clean_acc"]["n"] == n_test  # the whole stand-in test split
    assert entry["metrics"]["clean_acc"]["value"] > 20.0, entry["metrics"]["clean_acc"]
    assert entry["flags"]["degenerate"] is False
    assert entry["timing"]["extractor"] > 0  # this run built the subset
    assert all(v >= 0 for v in entry["timing"].values())


def _manifest(env: dict[str, Path]) -> dict[str, Any]:
    (path,) = (env["cache"] / "manifests").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_headline_command_sep_neg_on_cifar100(env, capsys) -> None:
    """``xrbench evaluate --defense sep_neg --dataset cifar100 --profile smoke --epochs 1``
    on a cifar-100-python stand-in: the smoke profile as it is, the paper's lambda."""
    standins.write_cifar(env["data"], hundred=True)
    entry, out = _evaluate(capsys, env, "sep_neg", "cifar100")
    _check_entry(entry, "cifar100", 100, "sep_neg", n_test=100, per_cluster=2)
    assert out.startswith("sep_neg on cifar100 / convnet / grad_x_input / profile smoke")
    recipe = entry["defense"]["recipe"]
    assert recipe["lambda_"] == -3000.0 and "paper" in recipe["lambda_source"]
    params = entry["protocol"]["parameters"]
    assert params["manipulation"]["iterations"] == 20  # smoke's own budget
    ext = _manifest(env)["extractor"]  # smoke's short extractor, recorded as such
    assert ext["kind"] == "trained" and ext["recipe"]["epochs"] == 1
    assert ext["reference"] is False


@pytest.mark.slow
@pytest.mark.parametrize("dataset,write", [
    ("mnist", lambda root: standins.write_mnist(root, N_TRAIN, N_TEST)),
    ("fashion_mnist", lambda root: standins.write_mnist(root, N_TRAIN, N_TEST, fashion=True,
                                                        gz=True)),
    ("cifar10", lambda root: standins.write_cifar(root, N_TRAIN, N_TEST)),
])
def test_mat_end_to_end(env, capsys, monkeypatch, dataset: str,
                        write: Callable[[Path], Path]) -> None:
    """mnist (idx files), fashion_mnist (only the published .gz archives) and cifar10 with
    the trained short extractor."""
    write(env["data"])
    _short_smoke(monkeypatch)
    entry, _ = _evaluate(capsys, env, "mat", dataset, *SMALL_BATCH)
    _check_entry(entry, dataset, 10, "mat")
    assert entry["protocol"]["parameters"]["manipulation"]["iterations"] == 2
    ext = _manifest(env)["extractor"]
    assert ext["kind"] == "trained" and ext["recipe"]["epochs"] == 1


def _imagenet_weights(path: Path) -> Path:
    """A randomly initialised torchvision resnet18 state dict: the layout of torchvision's
    ImageNet weights file, without a download."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_mat_end_to_end_tinyimagenet(env, capsys, monkeypatch, tmp_path) -> None:
    """The original tiny-imagenet-200 folder; the subset from ImageNet-layout weights."""
    from xrbench.utils import sha256_file

    standins.write_tinyimagenet(env["data"], N_TRAIN, N_TEST)
    weights = _imagenet_weights(tmp_path / "resnet18-imagenet.pth")
    _short_smoke(monkeypatch)
    entry, _ = _evaluate(capsys, env, "mat", "tinyimagenet", *SMALL_BATCH,
                         "--extractor-weights", str(weights))
    _check_entry(entry, "tinyimagenet", 200, "mat")
    ext = _manifest(env)["extractor"]
    assert ext["kind"] == "imagenet" and ext["checkpoint_sha256"] == sha256_file(weights)
    # the extractor was not trained: the only checkpoint is the mat model's
    assert [p.parent.name for p in (env["cache"] / "checkpoints").rglob("*.pt")] == ["convnet"]


@pytest.mark.slow
def test_mat_end_to_end_imagefolder_survives_a_move(env, capsys, monkeypatch, tmp_path) -> None:
    """``imagefolder:PATH``: the entry names the folder by the hash of its files; moved
    elsewhere, the same run reuses every cached result (checkpoint, manifest, stages) and
    lands in the same table."""
    from xrbench.leaderboard.render import group_key

    first = standins.write_imagefolder(tmp_path / "photos", N_TRAIN, N_TEST)
    weights = _imagenet_weights(tmp_path / "resnet18-imagenet.pth")
    _short_smoke(monkeypatch)
    entry, _ = _evaluate(capsys, env, "mat", f"imagefolder:{first}", *SMALL_BATCH,
                         "--extractor-weights", str(weights))
    name = entry["dataset"]["name"]
    assert name.startswith("imagefolder:") and str(first) not in name
    _check_entry(entry, name, 10, "mat")
    assert str(first) in entry["dataset"]["source"]  # where it was, as information

    moved = tmp_path / "archive" / "renamed-photos"
    moved.parent.mkdir()
    shutil.move(str(first), moved)
    cache_files = sorted(p.relative_to(env["cache"]) for p in env["cache"].rglob("*")
                         if p.is_file() and "locks" not in p.parts)
    env["out"] = tmp_path / "out-after-move"
    again, out = _evaluate(capsys, env, "mat", f"imagefolder:{moved}", *SMALL_BATCH,
                           "--extractor-weights", str(weights))
    assert again["dataset"]["name"] == name and str(moved) in again["dataset"]["source"]
    assert again["subset"] == entry["subset"] and again["checkpoint"]["sha256"] == \
        entry["checkpoint"]["sha256"] and again["checkpoint"]["origin"] == "cache"
    assert again["metrics"] == entry["metrics"]
    assert "reused cached stages: accuracy, rps, insertion, adv_insertion, retrieval," in out
    assert group_key(again) == group_key(entry)  # the same leaderboard table
    # nothing new in the cache: same checkpoint, manifest and stage files (the moved folder
    # only gets its own content index, the files' sha256 under their new location)
    assert sorted(p.relative_to(env["cache"]) for p in env["cache"].rglob("*")
                  if p.is_file() and "locks" not in p.parts
                  and "imagefolder-index" not in p.parts) == [
        p for p in cache_files if "imagefolder-index" not in p.parts]


def test_without_data_one_line_says_where_to_put_the_files(env, capsys) -> None:
    rc = main(["evaluate", "--defense", "sep_neg", "--dataset", "cifar100",
               "--data-dir", str(env["data"])])
    out, err = capsys.readouterr()
    assert rc != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xrbench: error: dataset 'cifar100' not found under ")
    assert str(env["data"]) in lines[0] and "cifar-100-python" in lines[0]
    assert "--data-dir" in lines[0] and "XRBENCH_DATA" in lines[0]
    assert not (env["cache"] / "checkpoints").exists()  # nothing was trained
