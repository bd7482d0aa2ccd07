"""The library's front door: what the CLI calls, usable from Python as well.

Data flows one way: names are resolved through the registries, a checkpoint is fetched or
trained, the frozen subset manifest is fetched or built, the metrics run, and a typed result
comes back; :mod:`xrbench.leaderboard` turns results into JSON files and tables.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import load_dataset
from .errors import XRBenchError
from .models import DEFAULT_BETA
from .protocol import PROTOCOL_VERSION, Profile
from .train import TrainedModel, get_trained_model
from .utils import cache_dir, hash_config, resolve_device


def train(dataset: str = "digits", model: str = "convnet", defense: str = "normal", *,
          seed: int = 0, overrides: dict[str, str] | None = None, device: str = "auto",
          data_dir: str | os.PathLike[str] | None = None, retrain: bool = False,
          progress: bool = True, beta: float = DEFAULT_BETA,
          cache_root: Path | None = None) -> TrainedModel:
    """Train ``defense`` on ``dataset`` with ``model`` (or reuse the cached checkpoint).

    Names are checked before any data is loaded, so a typo fails fast.
    """
    from .registry import defenses, models

    defenses.get(defense)
    models.get(model)
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    return get_trained_model(ds, model, defense, overrides=overrides, seed=seed, device=dev,
                             retrain=retrain, progress=progress, beta=beta,
                             cache_root=cache_root)


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`: the entry, where it was written, and what was reused."""

    entry: dict[str, Any]
    path: Path
    written: bool
    cached_stages: list[str]


def default_results_dir() -> Path:
    """``$XRBENCH_RESULTS`` or ``<cache>/results``."""
    env = os.environ.get("XRBENCH_RESULTS")
    return Path(env).expanduser() if env else cache_dir() / "results"


def _load_user_checkpoint(ds: Any, model_name: str, path: str, sha256: str | None,
                          device: torch.device, beta: float) -> tuple[torch.nn.Module, str]:
    from .checkpoints import load_weights
    from .models import create_model

    model = create_model(model_name, ds.card, beta=beta)
    digest = load_weights(model, path, sha256)
    return model.to(device).eval(), digest


def evaluate(defense: str = "normal", dataset: str = "digits", model: str = "convnet",
             explainer: str = "grad_x_input", profile: "str | Profile" = "quick", *,
             seed: int = 0,
             out: str | os.PathLike[str] | None = None, checkpoint: str | None = None,
             checkpoint_sha256: str | None = None, overrides: dict[str, str] | None = None,
             device: str = "auto", data_dir: str | os.PathLike[str] | None = None,
             retrain: bool = False, force: bool = False, progress: bool = True,
             beta: float = DEFAULT_BETA, cache_root: Path | None = None) -> Evaluation:
    """Score one (defense, dataset, model, explainer, profile, seed) with the fixed protocol
    and write its JSON entry to ``out/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json``.

    ``checkpoint`` scores user-supplied weights (a state dict for ``model``) instead of
    training; its sha256 is checked against ``checkpoint_sha256`` or its sidecar JSON.
    """
    from .evaluate import EvalContext, StageCache, build_entry, metric
    from .explainers import get_explainer
    from .leaderboard.schema import entry_path, read_entry, write_entry
    from .models import count_parameters
    from .protocol import get_profile
    from .registry import defenses, explainers, models
    from .subset import get_manifest
    from . import stages as st

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    defense_entry = defenses.get_entry(defense)
    models.get(model)
    expl = get_explainer(explainer)
    explainers.get(explainer)
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    card = ds.card

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if checkpoint is not None:
        net, digest = _load_user_checkpoint(ds, model, checkpoint, checkpoint_sha256, dev, beta)
        recipe = {"note": "user-supplied weights; recipe unknown"}
        defense_info = {"name": defense, "recipe": recipe, "recipe_hash": hash_config(recipe),
                        "source": "user checkpoint"}
        ckpt_info = {"sha256": digest, "origin": "user"}
    else:
        trained = get_trained_model(ds, model, defense, overrides=overrides, seed=seed,
                                    device=dev, retrain=retrain, progress=progress, beta=beta,
                                    cache_root=cache_root)
        net, digest = trained.model, trained.sha256
        defense_info = {"name": defense, "recipe": trained.meta["recipe"],
                        "recipe_hash": trained.meta["recipe_hash"],
                        "source": defense_entry.source}
        ckpt_info = {"sha256": digest, "origin": "cache" if trained.reused else "trained"}
        if not trained.reused:
            timing["train"] = round(trained.train_seconds, 3)
    net.eval()
    timing.setdefault("train", 0.0)

    t1 = time.perf_counter()
    manifest, _ = get_manifest(ds, prof.per_cluster, dev, progress=progress,
                               cache_root=cache_root)
    timing["subset"] = round(time.perf_counter() - t1, 3)
    idx = torch.tensor(manifest["indices"])
    images, labels = ds.test.get_batch(idx)

    ctx = EvalContext(
        model=net, model_name=model, explainer=expl, dataset=ds, profile=prof,
        images=images.to(dev), labels=labels.to(dev), device=dev, seed=seed,
        progress=progress, cache=StageCache(cache_root, force=force), timing=timing,
        base_key={"protocol": PROTOCOL_VERSION, "checkpoint": digest,
                  "manifest": manifest["sha256"], "explainer": expl.describe(),
                  "profile": prof.parameters(card), "seed": seed, "model": model,
                  "device": dev.type},
        code_versions=dict(st.CODE_VERSIONS))
    outputs = {name: ctx.run(name, lambda f=getattr(st, f"stage_{name}"): f(ctx))
               for name in st.STAGES}

    b = prof.bootstrap_resamples
    acc = outputs["accuracy"]
    metrics: dict[str, Any] = {
        "clean_acc": metric(acc["clean_correct"].float(), b, seed, scale=100.0),
        "pgd_acc": metric(acc["pgd_correct"].float(), b, seed, scale=100.0),
    }
    manip, not_converged = st.summarize_manipulation(ctx, outputs["manipulation"])
    metrics.update(manip)
    metrics["rps"] = {sim: {e: metric(v, b, seed) for e, v in per.items()}
                      for sim, per in outputs["rps"]["values"].items()}
    metrics["insertion"] = metric(outputs["insertion"]["scores"], b, seed)
    metrics["adv_insertion"] = metric(outputs["adv_insertion"]["scores"], b, seed)
    ret = outputs["retrieval"]
    metrics["retrieval"] = {kind: {st.eps_key(e, card.grey): metric(ret["hits"][kind][i].float(),
                                                                      b, seed)
                                   for i, e in enumerate(ret["eps"])}
                            for kind in st.RETRIEVAL_KINDS}
    land = outputs["landscape"]
    metrics["landscape"] = {k: [float(v) for v in land[k]]
                            for k in ("gammas", "explanation", "cross_entropy")}
    clean = metrics["clean_acc"]["value"] or 0.0
    flags = {"not_converged": not_converged,
             "degenerate": clean < 2 * 100.0 / card.num_classes}
    timing["total"] = round(time.perf_counter() - t0, 3)  # t0 precedes training
    model_info = {"name": model, "parameters": count_parameters(net), "beta": beta,
                  "activation": "softplus"}
    entry = build_entry(ctx=ctx, metrics=metrics, flags=flags, manifest=manifest,
                        defense=defense_info, checkpoint=ckpt_info, model_info=model_info)

    path = entry_path(Path(out) if out is not None else default_results_dir(), entry)
    if path.is_file() and not force:
        old = read_entry(path)
        if _same_run(old, entry):
            return Evaluation(old, path, False, ctx.cached_stages)
        raise XRBenchError(f"{path} holds an entry of a different run (other checkpoint, "
                           "recipe or protocol values); pass --force to replace it or --out "
                           "to write elsewhere")
    write_entry(path, entry, overwrite=True)
    return Evaluation(entry, path, True, ctx.cached_stages)


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same inputs and same numbers (date, timings and where the checkpoint came from may
    differ between two runs of the same thing)."""
    keys = ("protocol", "subset", "defense", "explainer", "seed", "model", "metrics", "flags")
    return (all(a.get(k) == b.get(k) for k in keys)
            and a["checkpoint"]["sha256"] == b["checkpoint"]["sha256"])
