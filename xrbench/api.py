"""The library's front door: what the CLI calls, usable from Python as well.

Data flows one way: names are resolved through the registries, a checkpoint is fetched or
trained, the frozen subset manifest is fetched or built, the metrics run, and a typed result
comes back; :mod:`xrbench.leaderboard` turns results into JSON files and tables.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import evaluation as ev
from .data import load_dataset
from .errors import XRBenchError
from .models import DEFAULT_BETA
from .protocol import Profile, check_seed, get_profile
from .train import TrainedModel, get_trained_model
from .utils import cache_dir, file_lock, hash_config, lock_file, resolve_device



def train(dataset: str = "digits", model: str = "convnet", defense: str = "normal", *,
          seed: int = 0, overrides: dict[str, str] | None = None, device: str = "auto",
          data_dir: str | os.PathLike[str] | None = None, retrain: bool = False,
          progress: bool = True, beta: float = DEFAULT_BETA,
          cache_root: str | os.PathLike[str] | None = None) -> TrainedModel:
    """Train ``defense`` on ``dataset`` with ``model`` (or reuse the cached checkpoint).

    Names are checked before any data is loaded, so a typo fails fast.
    """
    from .registry import defenses, models

    check_seed(seed)
    defenses.get(defense)
    models.get(model)
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    return get_trained_model(ds, model, defense, overrides=overrides, seed=seed, device=dev,
                             retrain=retrain, progress=progress, beta=beta,
                             cache_root=_path(cache_root))


def _path(p: str | os.PathLike[str] | None) -> Path | None:
    """A cache root as given (a string or a path) as a Path; None stays None."""
    return None if p is None else Path(p)


@dataclass
class Result:
    """The outcome of :func:`evaluate`.

    ``entry``: the section-8 record (the one on disk: if an identical run was there already,
    that one); ``path``: its JSON file; ``written``: False when an identical entry was left in
    place; ``reused_stages``: stages whose output came from the cache; ``examples``: the
    per-example values of every stage, ``{"<stage>/<field>": array}`` (also in the file the
    entry names, :func:`xrbench.leaderboard.examples.read_examples`); ``seconds``: wall time
    this call spent per step (the entry's ``timing`` is the time each stage took when it was
    computed, which for reused stages was an earlier run).
    """

    entry: dict[str, Any]
    path: Path
    written: bool
    reused_stages: list[str]
    examples: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def check_output_folder(folder: Path) -> None:
    """Fail before any long work when ``folder`` cannot take results: it is (or lies under)
    a file, or it cannot be created or written. Creates it if needed."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise XRBenchError(f"cannot write results under {folder}: {parent} is a file, "
                                   "not a folder; pass --out with a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".xrbench-write-check-"):
            pass
    except OSError as exc:
        raise XRBenchError(f"cannot write results to {folder} ({exc.strerror or exc}); pass "
                           "--out with a writable folder") from None


def recipe(defense: str, dataset: str = "digits", model: str = "convnet", *,
           overrides: dict[str, str] | None = None,
           data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The recipe ``defense`` trains with on (dataset, model): one row per field with its
    ``value`` (resolved for the dataset and model, ``overrides`` applied), its ``default``
    in the recipe class and the ``note`` written beside it (unit, rule, source)."""
    import dataclasses

    from .data import dataset_card
    from .defenses.base import field_notes
    from .registry import defenses
    from .train import build_recipe

    cls = defenses.get(defense).Recipe
    resolved = build_recipe(defense, dataset_card(dataset, data_dir), model, overrides)
    notes = field_notes(cls)
    return [{"field": f.name, "value": getattr(resolved, f.name), "default": f.default,
             "note": notes.get(f.name, "")} for f in dataclasses.fields(cls)]


def default_results_dir() -> Path:
    """``$XRBENCH_RESULTS`` or ``<cache>/results``."""
    env = os.environ.get("XRBENCH_RESULTS")
    return Path(env).expanduser() if env else cache_dir() / "results"


def _checkpoint(ds: Any, model: str, defense: str, *, checkpoint: str | None,
                checkpoint_sha256: str | None, overrides: dict[str, str] | None, seed: int,
                device: torch.device, retrain: bool, progress: bool, beta: float,
                cache_root: Path | None) -> tuple[torch.nn.Module, dict[str, Any],
                                                  dict[str, Any], float]:
    """(model in eval mode, the entry's ``defense`` and ``checkpoint`` parts, seconds spent
    training): the user's weights, else the cached or newly trained checkpoint. The
    ``defense`` part says whether the recipe is the reference one (``reference``,
    :func:`~xrbench.engine.entry.recipe_reference`); user weights never are."""
    from .checkpoints import load_weights
    from .engine.entry import recipe_reference
    from .models import create_model
    from .registry import defenses

    dist = defenses.get_entry(defense).provenance()["distribution"]
    if checkpoint is not None:
        net = create_model(model, ds.card, beta=beta)
        digest = load_weights(net, checkpoint, checkpoint_sha256)
        recipe = {"note": "user-supplied weights; recipe unknown"}
        return (net.to(device).eval(),
                {"name": defense, "recipe": recipe, "recipe_hash": hash_config(recipe),
                 "source": "user checkpoint", "distribution": dist, "reference": False,
                 "reference_note": "user-supplied weights; recipe unknown"},
                {"sha256": digest, "origin": "user"}, 0.0)
    trained = get_trained_model(ds, model, defense, overrides=overrides, seed=seed,
                                device=device, retrain=retrain, progress=progress, beta=beta,
                                cache_root=cache_root)
    reference = recipe_reference(defense, ds.card, model, trained.meta["recipe"])
    if trained.meta.get("fast_double_backward") and reference.get("reference"):
        # the reference recipe, trained on kernels whose float rounding differs (fastgrad)
        reference = {"reference": False,
                     "reference_note": "trained with XRBENCH_FAST_DOUBLE_BACKWARD=1 (the "
                                       "reference recipe; other float rounding)"}
    return (trained.model.eval(),
            {"name": defense, "recipe": trained.meta["recipe"],
             "recipe_hash": trained.meta["recipe_hash"],
             "source": defenses.get_entry(defense).source, "distribution": dist,
             **reference},
            {"sha256": trained.sha256, "origin": "cache" if trained.reused else "trained"},
            0.0 if trained.reused else trained.train_seconds)


def evaluate(defense: str = "normal", dataset: str = "digits", model: str = "convnet",
             explainer: str = "grad_x_input", profile: "str | Profile" = "quick", *,
             seed: int = 0,
             out: str | os.PathLike[str] | None = None, checkpoint: str | None = None,
             checkpoint_sha256: str | None = None, overrides: dict[str, str] | None = None,
             device: str = "auto", data_dir: str | os.PathLike[str] | None = None,
             retrain: bool = False, force: bool = False, replace: bool = False,
             progress: bool = True, beta: float = DEFAULT_BETA,
             cache_root: str | os.PathLike[str] | None = None,
             extractor_weights: str | os.PathLike[str] | None = None,
             shards: int | None = None, executor: "str | Any" = "local",
             ray_address: str | None = None, attacks: "tuple[str, ...] | list[str]" = ()
             ) -> Result:
    """Score one (defense, dataset, model, explainer, profile, seed) with the fixed protocol
    and write its JSON entry to
    ``out/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json``, with its
    per-example values beside it (``...-s<seed>.examples.npz``).

    ``checkpoint`` scores user-supplied weights (a state dict for ``model``) instead of
    training; its sha256 is checked against ``checkpoint_sha256`` or its sidecar JSON.
    ``force`` recomputes every stage and replaces an existing entry of a different run;
    ``replace`` only replaces it, reusing cached stages (e.g. an entry written by an older
    xrbench that lacked a stage: only the new stage computes).
    ``extractor_weights`` builds the subset with torchvision's ImageNet ResNet18 from that
    weights file instead of the trained reference extractor (PROTOCOL 4.1).
    ``shards`` splits the manipulation, retrieval, Insertion and Adv-Insertion stages into
    that many deterministic shards run on ``executor`` (``"local"``: in sequence here;
    ``"ray"``: as Ray tasks on a local cluster or the one at ``ray_address``; or an
    :class:`~xrbench.engine.executors.Executor`), merged into the entry an unsharded run writes
    (:mod:`xrbench.engine.sharding`). Default: 1 locally, one shard per CPU of the Ray cluster.
    ``attacks`` adds registered attacks (``xrbench list attacks``, plugins of the entry-point
    group ``xrbench.attacks``) to the worst-case ensemble (PROTOCOL 5.8); the entry records
    each with its version and distribution, and is then not a reference row.
    """
    from .leaderboard.examples import flatten
    from .leaderboard.schema import entry_path

    cache_root = _path(cache_root)
    prof = ev.check_arguments(profile, seed, shards)
    extra_attacks = ev.check_attacks(attacks)
    runner, own_executor = ev.executor_for(executor, ray_address)
    out_dir = Path(out).expanduser() if out is not None else default_results_dir()
    check_output_folder(out_dir)  # before hours of work, not after
    expl, dev, ds, spec = ev.resolve(defense, model, explainer, device, dataset, data_dir,
                                     prof, extractor_weights)
    if prof.train_epochs is not None and checkpoint is None:
        overrides = {"epochs": str(prof.train_epochs), **(overrides or {})}
    t0 = time.perf_counter()
    net, defense_info, ckpt_info, train_seconds = _checkpoint(
        ds, model, defense, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
        overrides=overrides, seed=seed, device=dev, retrain=retrain, progress=progress,
        beta=beta, cache_root=cache_root)
    timing = {"train": round(train_seconds, 3)}
    manifest, images, labels = ev.subset_images(ds, prof, dev, spec, progress=progress,
                                                 cache_root=cache_root, timing=timing)
    ctx = ev.run_context(net, model, expl, ds, prof, images, labels, dev, seed=seed,
                         progress=progress, cache_root=cache_root, force=force, timing=timing,
                         checkpoint_sha256=ckpt_info["sha256"],
                         manifest_sha256=manifest["sha256"], shards=shards, runner=runner)
    ctx.extra_attacks = extra_attacks
    ran = ev.run_all_stages(ctx, runner, shards, own_executor)
    timing["total"] = round(time.perf_counter() - t0, 3)  # t0 precedes training
    entry = ev.build_run_entry(ctx, ran, net, model, beta, explainer, manifest, defense_info,
                               ckpt_info)
    ev.mark_extra_attacks(entry, extra_attacks)
    examples = flatten(ran.outputs)
    done = _write(entry_path(out_dir, entry), entry, examples, force or replace, cache_root)
    return Result(done.entry, done.path, done.written, ctx.reused_stages, examples,
                  ev.step_seconds(timing, ran))


def _write(path: Path, entry: dict[str, Any], examples: dict[str, Any], force: bool,
           cache_root: Path | None) -> Any:
    """Write the entry (one overwrite rule: :func:`~xrbench.leaderboard.schema.write_entry`);
    if that fails after all the work, save it under ``<cache>/unsaved-results`` and say so."""
    from .leaderboard.schema import entry_path, write_entry

    # the lock lives in the cache, not beside the user's results
    try:
        with file_lock(lock_file(f"entry-{hash_config(str(path.resolve()))}", cache_root)):
            return write_entry(path, entry, overwrite=force, examples=examples)
    except OSError as exc:  # the folder went away or became read-only during the run
        rescue = entry_path((cache_root or cache_dir()) / "unsaved-results", entry)
        write_entry(rescue, entry, overwrite=True, examples=examples)
        raise XRBenchError(f"could not write {path} ({exc.strerror or exc}); the entry was "
                           f"saved to {rescue} instead (copy it where it belongs)") from None


def subset(dataset: str = "digits", profile: str = "quick", *, device: str = "auto",
           data_dir: str | os.PathLike[str] | None = None,
           out: str | os.PathLike[str] | None = None,
           rebuild: bool = False, force: bool = False, progress: bool = True,
           cache_root: str | os.PathLike[str] | None = None,
           extractor_weights: str | os.PathLike[str] | None = None
           ) -> tuple[dict[str, Any], str]:
    """The frozen subset manifest of ``dataset`` at ``profile``'s size (PROTOCOL 4): the
    shipped or cached one, else built; ``out`` writes it to that file too (an existing file
    only with ``force``). The extractor is the profile's (:func:`evaluate`), or torchvision's
    ImageNet ResNet18 from ``extractor_weights``. Returns (manifest, where it came from)."""
    from .subset import ExtractorSpec, get_manifest

    if out is not None and Path(out).exists() and not force:
        raise XRBenchError(f"{out} exists; pass --force to overwrite it, or another --out")
    prof = get_profile(profile)
    ds = load_dataset(dataset, data_dir)
    spec = ExtractorSpec(prof.extractor_epochs,
                         None if extractor_weights is None else os.fspath(extractor_weights))
    return get_manifest(ds, prof.per_cluster, resolve_device(device), extractor=spec,
                        progress=progress, rebuild=rebuild, out=Path(out) if out else None,
                        cache_root=_path(cache_root))


def compare(a: str | os.PathLike[str], b: str | os.PathLike[str], *,
            n_resamples: int = 1000, seed: int = 0) -> list[Any]:
    """B - A for every metric of two entries on the same subset, each with a paired
    bootstrap 95% interval (:mod:`xrbench.compare`); a list of ``Difference`` rows."""
    from .compare import compare as _compare

    if n_resamples < 100:
        raise XRBenchError(f"{n_resamples} resamples are too few for a 95% interval; use at "
                           "least 100")
    return _compare(a, b, n_resamples=n_resamples, seed=seed)


def calibrate(defense: str, dataset: str = "digits", model: str = "convnet",
              **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """SEP's lambda for (dataset, model) by PROTOCOL 7's rule (:mod:`xrbench.calibrate`):
    (record, path of the JSON record). Keywords as :func:`xrbench.calibrate.calibrate`."""
    from .calibrate import calibrate as _calibrate

    return _calibrate(defense, dataset, model, **kwargs)


def leaderboard(results: str | os.PathLike[str] | list[str | os.PathLike[str]]
                | tuple[str | os.PathLike[str], ...] | None = None, *, format: str = "md",
                intervals: bool = False, reported: str | None = None,
                sort: str = "expl_end", superseded: bool = False) -> Any:
    """The leaderboard of every entry below ``results`` (a folder or a list of folders;
    default: the published entries shipped with the package), rendered as ``format``:
    ``md`` (markdown tables, notes and correlation lines), ``json`` (one document valid
    against ``leaderboard-schema.json``) or ``html`` (one self-contained page).

    Returns a :class:`xrbench.leaderboard.document.Rendered`: ``.text`` and ``.board`` (its
    tables, duplicates and skipped files). A malformed or invalid file is skipped with a
    ``logging`` warning naming it; duplicated rows are warned about and shown, not merged.
    ``intervals``: each value with its 95% bootstrap interval (markdown: the intervals view).
    ``reported``: where the reported entries shipped with xrbench (paper tables) appear:
    ``all`` (beside measured rows of the same dataset, model and explainer, any profile, and in
    tables of their own; the default without ``results``), ``beside`` (the default with
    ``results``) or ``none``. ``sort``: the metric each table's rows are ordered by,
    ``expl_end`` or ``expl_end_worst`` (PROTOCOL 5.8). ``superseded``: also show the tables
    of protocol versions older than the newest one among the entries (left out by default,
    and named in one closing note). No table at all is an
    :class:`XRBenchError` naming the skipped files."""
    from .leaderboard.board import load_board, warn_about
    from .leaderboard.document import Rendered, render_board

    if format not in ("md", "json", "html"):
        raise XRBenchError(f"unknown leaderboard format {format!r}; use md, json or html")
    if reported is not None and reported not in ("all", "beside", "none"):
        raise XRBenchError(f"--reported must be all, beside or none, got {reported!r}")
    if results is None:
        dirs = None
    elif isinstance(results, (str, os.PathLike)):
        dirs = [results]
    else:
        dirs = list(results)
    if sort not in ("expl_end", "expl_end_worst"):
        raise XRBenchError(f"--sort must be expl_end or expl_end_worst, got {sort!r}")
    board = load_board(dirs, reported_mode=reported, sort_by=sort, superseded=superseded)
    if not board.tables:
        where = "the published entries" if dirs is None else ", ".join(map(str, dirs))
        why = "".join(f"; skipped {s.path}: {s.reason}" for s in board.skipped[:5])
        more = (f"; and {len(board.skipped) - 5} more skipped files"
                if len(board.skipped) > 5 else "")
        raise XRBenchError(f"no entries (*.json) found under {where}{why}{more}")
    warn_about(board)
    return Rendered(render_board(board, format, intervals=intervals), board)
