"""``xrbench calibrate``: SEP's lambda for a dataset the paper did not train on (PROTOCOL 7).

The paper's lambdas (50000 / -3000) hold for its five datasets. L_f scales like
``1 / (H*W)^2``, so elsewhere (digits, ``imagefolder:...``) lambda is chosen by rule:

1. Train MAT with the **short recipe** (:data:`SHORT_EPOCHS` epochs, every other field the
   reference: batch 64, Adam 1e-3, PGD 10 steps at the dataset's eps) as the reference point.
2. Train ``sep_pos`` (or ``sep_neg``) with the same short recipe for every |lambda| of the
   grid (default :data:`GRID`, sign of the defense). The warm-up and ramp are shares of the
   epochs (0.2 + 0.2), so the term is fully on for the last 60% of them.
3. Score each checkpoint like the Accuracy stage (5.1): clean accuracy and PGD accuracy
   (10 steps, eps_pgd, step 2.5 eps / 10, random start) on the first
   :data:`TEST_IMAGES` test images.
4. The chosen lambda is **the largest |lambda| whose PGD accuracy stays within
   :data:`PGD_POINTS` points of MAT's and whose clean accuracy stays within
   :data:`CLEAN_POINTS` points** (a point whose training diverged fails the rule).

Every grid point is a cached checkpoint, so an interrupted calibration resumes where it
stopped. The record (every point's numbers, the rule, the recipe, the chosen value) is a JSON
file in ``<cache>/calibrations/``; the calibrations shipped with the package (digits) live in
``xrbench/calibrations/`` and are found first. A SEP recipe that takes its lambda from a
calibration records ``lambda_source`` = the file and its sha256.
"""

from __future__ import annotations

import datetime
import math
import os
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import XRBenchError
from .protocol import PROTOCOL_VERSION
from .utils import cache_dir, duration_text, read_json_object, sha256_file, write_json

if TYPE_CHECKING:
    from .data import DatasetCard

#: |lambda| values tried (the defense's sign is applied). L_f is the mean squared difference
#: of two sum-normalised maps: ~1e-6 at 28x28, ~1e-3 to 1e-4 at 8x8, so the grid spans the
#: values where lambda * L_f goes from negligible to far above the cross-entropy on small images.
GRID: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0,
                           100000.0)
SHORT_EPOCHS = 10  # the short recipe's epochs (MAT and every grid point)
TEST_IMAGES = 1000  # test images scored per point (quick's PGD cap)
PGD_POINTS = 3.0  # PGD accuracy may fall at most this many points below MAT's
CLEAN_POINTS = 10.0  # clean accuracy may fall at most this many points below MAT's
SEP_DEFENSES = ("sep_pos", "sep_neg")
RULE = (f"the largest |lambda| whose PGD accuracy stays within {PGD_POINTS:g} points of MAT's "
        f"and whose clean accuracy stays within {CLEAN_POINTS:g} points (short recipe)")
GRID_POINT_SOURCE = "xrbench calibrate grid point"


@dataclass(frozen=True)
class Calibration:
    """A calibration record found on disk: its ``chosen`` lambda, file and sha256."""

    defense: str
    dataset: str
    model: str
    chosen: float
    path: Path
    sha256: str
    shipped: bool

    @property
    def source(self) -> str:
        """What a recipe records as ``lambda_source``."""
        where = "shipped with xrbench" if self.shipped else "from the user's cache"
        return f"xrbench calibrate, {self.path.name} ({where}), sha256 {self.sha256}"


def record_name(defense: str, dataset: str, model: str) -> str:
    """File name of a calibration record, e.g. ``sep_pos-digits-convnet.json``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{defense}-{dataset}-{model}")
    return f"{safe}.json"


def shipped_dir() -> Path:
    """The calibrations shipped with the package."""
    return Path(str(resources.files("xrbench").joinpath("calibrations")))


def user_dir(cache_root: Path | None = None) -> Path:
    """``<cache>/calibrations``: where ``xrbench calibrate`` writes its records."""
    return (cache_root or cache_dir()) / "calibrations"


def _from_file(path: Path, defense: str, dataset: str, model: str,
               shipped: bool) -> Calibration:
    record = read_json_object(path, "calibration record")
    chosen = record.get("chosen")
    if (record.get("defense"), record.get("dataset"), record.get("model")) != (
            defense, dataset, model):
        raise XRBenchError(f"calibration record {path} is for {record.get('defense')} on "
                           f"{record.get('dataset')}/{record.get('model')}, not {defense} on "
                           f"{dataset}/{model}; delete it and run `xrbench calibrate` again")
    if chosen is None:
        raise XRBenchError(f"calibration record {path}: no lambda of its grid passed the rule "
                           f"({RULE}); try a grid of smaller values with `xrbench calibrate "
                           f"--defense {defense} --dataset {dataset} --model {model} --grid ... "
                           "--force`, or pass --set lambda_=...")
    if not isinstance(chosen, (int, float)) or not math.isfinite(chosen):
        raise XRBenchError(f"calibration record {path}: 'chosen' is {chosen!r}, not a number; "
                           "delete the file and run `xrbench calibrate` again")
    return Calibration(defense, dataset, model, float(chosen), path, sha256_file(path), shipped)


def find_calibration(defense: str, dataset: str, model: str,
                     cache_root: Path | None = None) -> Calibration | None:
    """The calibration of (defense, dataset, model): the one shipped with the package first
    (the reference for its dataset), else the user's (``<cache>/calibrations``); ``None``
    when there is none. A malformed record is an :class:`XRBenchError` naming the file."""
    name = record_name(defense, dataset, model)
    for folder, shipped in ((shipped_dir(), True), (user_dir(cache_root), False)):
        path = folder / name
        if path.is_file():
            return _from_file(path, defense, dataset, model, shipped)
    return None


def estimate_seconds(card: DatasetCard, model: str, grid_size: int = len(GRID),
                     epochs: int = SHORT_EPOCHS) -> float | None:
    """Rough CPU seconds of a calibration of ``card``: the shipped digits/convnet calibration's
    measured seconds per (training image x pixel x epoch), scaled to ``card``'s size. It
    holds for convnet-sized models; larger models cost more. ``None`` without a reference."""
    ref_path = shipped_dir() / record_name("sep_neg", "digits", "convnet")
    if not ref_path.is_file() or not card.train_size:
        return None
    ref = read_json_object(ref_path, "calibration record")
    try:
        per_unit = float(ref["cost"]["seconds_per_image_pixel_epoch"])
    except (KeyError, TypeError, ValueError):
        return None
    factors = [float(r["cost"]["sep_over_mat"]) for r in (
        ref, *(read_json_object(p, "calibration record") for p in
               [shipped_dir() / record_name("sep_pos", "digits", "convnet")] if p.is_file()))
        if (r.get("cost") or {}).get("sep_over_mat")]
    sep_factor = sum(factors) / len(factors) if factors else 3.0
    units = card.train_size * card.size * card.size * epochs
    return per_unit * units * (1 + sep_factor * grid_size)


def missing_calibration(defense: str, card: DatasetCard, model: str) -> XRBenchError:
    """The error for a SEP recipe with no lambda: names the exact command and its cost."""
    command = (f"xrbench calibrate --defense {defense} --dataset {shlex.quote(_typed_name(card))} "
               f"--model {model}")
    runs = f"{len(GRID) + 1} trainings of {SHORT_EPOCHS} epochs"
    est = estimate_seconds(card, model)
    if est is not None:
        cost = (f"{runs}, roughly {duration_text(est)} on a 2-core CPU for a convnet-sized model "
                "(scaled from the digits calibration; larger models cost more)")
    else:
        cost = runs
    return XRBenchError(
        f"SEP has no lambda for {card.name!r} with {model!r}: the paper's values hold only for "
        f"its datasets ({', '.join(_paper_datasets())}) and lambda does not transfer across "
        f"image sizes (PROTOCOL 7). Calibrate it ({cost}): `{command}`, or pass "
        "--set lambda_=...")


def _typed_name(card: DatasetCard) -> str:
    """The dataset as a user names it on the command line: an ``imagefolder`` card is named
    by a hash of its files, but typed as ``imagefolder:PATH`` (the path is in its source)."""
    if card.name.startswith("imagefolder:") and " at " in card.source:
        path = card.source.split(" at ", 1)[1].split(" (name:", 1)[0]
        return f"imagefolder:{path}"
    return card.name


def _paper_datasets() -> list[str]:
    from .defenses.sep import SEP_LAMBDA

    return list(SEP_LAMBDA)


def _score(model: Any, ds: Any, device: Any, seed: int) -> dict[str, float]:
    """Clean and PGD accuracy (%) on the first :data:`TEST_IMAGES` test images (5.1)."""
    import torch

    from .attacks.pgd import pgd_step_size
    from .metrics.accuracy import accuracy_under_pgd
    from .engine.runtime import stage_seed

    eps = ds.card.eps_pgd
    n = min(TEST_IMAGES, len(ds.test))
    g = torch.Generator(device=device).manual_seed(stage_seed(seed, "calibrate"))
    out = accuracy_under_pgd(model.eval(), ds.test, eps=eps, steps=10,
                             step_size=pgd_step_size(eps, 10), indices=torch.arange(n),
                             generator=g)
    return {"clean": round(float(out["clean_acc"]), 4), "pgd": round(float(out["pgd_acc"]), 4)}


def choose(points: Sequence[dict[str, Any]], reference: dict[str, float]) -> float | None:
    """The rule: the largest |lambda| among ``points`` (each with ``lambda``, ``clean``,
    ``pgd`` in %, or ``None`` numbers for a diverged run) whose PGD accuracy is at least MAT's
    minus :data:`PGD_POINTS` and clean accuracy at least MAT's minus :data:`CLEAN_POINTS`."""
    ok = [p["lambda"] for p in points if passes(p, reference)]
    return max(ok, key=abs) if ok else None


def passes(point: dict[str, Any], reference: dict[str, float]) -> bool:
    """Whether one grid point satisfies the rule (see :func:`choose`)."""
    if point.get("clean") is None or point.get("pgd") is None:
        return False
    return (point["pgd"] >= reference["pgd"] - PGD_POINTS
            and point["clean"] >= reference["clean"] - CLEAN_POINTS)


def calibrate(defense: str, dataset: str = "digits", model: str = "convnet", *,
              grid: Sequence[float] | None = None, epochs: int = SHORT_EPOCHS, seed: int = 0,
              device: str = "auto", data_dir: str | os.PathLike[str] | None = None,
              out: str | os.PathLike[str] | None = None, force: bool = False,
              progress: bool = True, cache_root: Path | None = None,
              on_point: Any = None) -> tuple[dict[str, Any], Path]:
    """Run PROTOCOL 7's calibration of ``defense`` (sep_pos or sep_neg) on (dataset, model)
    and write its record (default ``<cache>/calibrations/<defense>-<dataset>-<model>.json``).

    ``grid``: |lambda| values (the defense's sign is applied; default :data:`GRID`).
    Returns (record, path). A record already there is kept when it holds the same numbers;
    a different one is replaced only with ``force``. ``on_point(point)`` is called after
    each grid point (the CLI prints a table row).
    """
    import torch
    from tqdm.auto import tqdm

    from . import __version__
    from .protocol import check_seed
    from .data import load_dataset
    from .registry import defenses, models
    from .train import NonFiniteLoss, get_trained_model
    from .utils import resolve_device

    if defense not in SEP_DEFENSES:
        raise XRBenchError(f"calibrate chooses SEP's lambda; --defense must be "
                           f"{' or '.join(SEP_DEFENSES)}, not {defense!r}")
    check_seed(seed)
    defenses.get(defense)
    models.get(model)
    values = [float(v) for v in (GRID if grid is None else grid)]
    if not values or any(not math.isfinite(v) or v == 0 for v in values):
        raise XRBenchError(f"--grid needs non-zero finite numbers, got {list(grid or [])!r}")
    sign = 1.0 if defense == "sep_pos" else -1.0
    lambdas = sorted({sign * abs(v) for v in values}, key=abs)
    path = Path(out).expanduser() if out is not None else (
        user_dir(cache_root) / record_name(defense, dataset, model))
    if path.exists() and not path.is_file():
        raise XRBenchError(f"{path} is not a file; pass --out with a file path")
    if path.is_file() and not force:  # before any training: a different grid or recipe
        old = read_json_object(path, "calibration record")
        old_epochs = (old.get("short_recipe") or {}).get("epochs")
        if old.get("grid") != lambdas or old_epochs != epochs:
            raise XRBenchError(f"{path} holds a different calibration (grid {old.get('grid')}, "
                               f"{old_epochs} epochs); pass --force to replace it, or --out "
                               "another file")
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    short = {"epochs": str(epochs)}

    def train(name: str, extra: dict[str, str]) -> tuple[dict[str, Any], float]:
        trained = get_trained_model(ds, model, name, overrides={**short, **extra}, seed=seed,
                                    device=dev, progress=progress, cache_root=cache_root)
        # the median epoch times the epochs: the first epoch also pays one-off start-up costs
        per_epoch = sorted(float(h["seconds"]) for h in trained.meta.get("history", []))
        seconds = (per_epoch[len(per_epoch) // 2] * epochs if per_epoch
                   else float(trained.meta.get("train_seconds", 0.0)))
        point = {**_score(trained.model, ds, dev, seed), "status": "trained",
                 "checkpoint_sha256": trained.sha256, "recipe_hash": trained.meta["recipe_hash"],
                 "train_seconds": round(seconds, 1)}
        return point, seconds

    bar = tqdm(total=len(lambdas) + 1, desc=f"calibrate {defense} {ds.card.name}/{model}",
               unit="run", disable=not progress)
    reference, mat_seconds = train("mat", {})
    bar.update(1)
    if on_point is not None:
        on_point({"lambda": 0.0, **reference})
    points: list[dict[str, Any]] = []
    sep_seconds: list[float] = []
    for lam in lambdas:
        try:
            point, secs = train(defense, {"lambda_": repr(lam), "lambda_source": GRID_POINT_SOURCE})
            sep_seconds.append(secs)
        except NonFiniteLoss as exc:
            point = {"clean": None, "pgd": None, "status": f"diverged: {exc}"}
        point = {"lambda": lam, **point, "passes": passes(point, reference)}
        points.append(point)
        bar.update(1)
        if on_point is not None:
            on_point(point)
    bar.close()

    units = len(ds.train) * ds.card.size * ds.card.size * epochs
    from .train import build_recipe

    record: dict[str, Any] = {
        "record": "xrbench SEP lambda calibration (PROTOCOL 7)",
        "protocol_version": PROTOCOL_VERSION,
        "defense": defense, "dataset": ds.card.name, "model": model, "seed": seed,
        "rule": {"text": RULE, "pgd_points": PGD_POINTS, "clean_points": CLEAN_POINTS},
        "short_recipe": build_recipe(defense, ds.card, model,
                                     {**short, "lambda_": "1",
                                      "lambda_source": GRID_POINT_SOURCE}).to_dict()
        | {"lambda_": "each grid value"},
        "scoring": {"test_images": min(TEST_IMAGES, len(ds.test)), "pgd_steps": 10,
                    "eps": ds.card.eps_pgd, "step": "2.5 * eps / 10", "random_start": True},
        "grid": lambdas,
        "reference": {"defense": "mat", **reference},
        "points": points,
        "chosen": choose(points, reference),
        "cost": {"mat_seconds": round(mat_seconds, 1),
                 "seconds_per_image_pixel_epoch": mat_seconds / units if units else None,
                 "sep_over_mat": (round(sum(sep_seconds) / len(sep_seconds) / mat_seconds, 2)
                                  if sep_seconds and mat_seconds > 0 else None)},
        "environment": {"xrbench": __version__, "torch": torch.__version__,
                        "device": str(dev), "threads": torch.get_num_threads()},
        "date": datetime.date.today().isoformat(),
    }
    if path.is_file():
        old = read_json_object(path, "calibration record")
        if _same_numbers(old, record):
            return old, path
        if not force:
            raise XRBenchError(f"{path} holds a different calibration (chosen "
                               f"{old.get('chosen')!r}, grid {old.get('grid')}); pass --force "
                               "to replace it, or --out another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record, path


def _strip_seconds(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_strip_seconds(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _strip_seconds(v) for k, v in obj.items() if k != "train_seconds"}
    return obj


def _same_numbers(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Same grid, recipe, reference and points, ignoring wall times (a resumed run)."""
    keys = ("grid", "reference", "points", "short_recipe", "chosen")
    return all(_strip_seconds(old.get(k)) == _strip_seconds(new.get(k)) for k in keys)
