"""The steps of :func:`xrbench.api.evaluate`, in the order it takes them: check the arguments
that need no work, get the executor, resolve the names, get the frozen subset's images, build
the run's context, run every stage, build the entry, sum up the seconds. The checkpoint step
(:func:`xrbench.api._checkpoint`) and the writing of the entry stay in :mod:`xrbench.api`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from .data import load_dataset
from .errors import XRBenchError
from .protocol import Profile, check_seed, get_profile
from .utils import resolve_device


def check_arguments(profile: "str | Profile", seed: int, shards: int | None) -> Profile:
    """The profile ``evaluate`` runs at, once the arguments that need no work are checked: the
    profile's name, the seed and ``shards`` (an integer >= 1 or None)."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    check_seed(seed)
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                               or shards < 1):
        raise XRBenchError(f"--shards must be an integer >= 1, got {shards!r}")
    return prof


def check_attacks(names: "tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """The attacks ``evaluate --attacks`` adds to the worst-case ensemble (PROTOCOL 5.8), each
    registered (an unknown name is an error listing the known ones), in order, once each;
    the ensemble's built-ins are in it already and are dropped."""
    from .attacks.ensemble import BUILTIN
    from .registry import attacks

    out: list[str] = []
    for name in names:
        attacks.get_entry(name)  # raises XRBenchError naming the registered attacks
        if name not in BUILTIN and name not in out:
            out.append(name)
    return tuple(out)


def mark_extra_attacks(entry: dict[str, Any], extra: tuple[str, ...]) -> None:
    """An entry whose ensemble has attacks beyond the protocol's is not a reference row
    (``defense.reference`` false; the note names them)."""
    if not extra:
        return
    defense = entry["defense"]
    note = f"the worst-case ensemble adds attacks: {', '.join(extra)}"
    old = defense.get("reference_note")
    defense["reference"] = False
    defense["reference_note"] = f"{old}; {note}" if old else note


def executor_for(executor: "str | Any", ray_address: str | None) -> tuple[Any, bool]:
    """(the executor the shards run on, whether ``evaluate`` made it and so closes it): an
    :class:`~xrbench.engine.executors.Executor` as given, else the one ``executor`` names."""
    from .engine.executors import Executor, get_executor

    own_executor = not isinstance(executor, Executor)
    return (get_executor(executor, ray_address) if own_executor else executor), own_executor


def resolve(defense: str, model: str, explainer: str, device: str, dataset: str,
             data_dir: str | os.PathLike[str] | None, prof: Profile,
             extractor_weights: str | os.PathLike[str] | None
             ) -> tuple[Any, torch.device, Any, Any]:
    """(explainer, device, dataset, subset extractor spec), once every name is known to its
    registry; a wrong ``extractor_weights`` fails here, not after the training."""
    from .explainers import get_explainer
    from .registry import defenses, explainers, models
    from .subset import ExtractorSpec

    defenses.get(defense)
    models.get(model)
    explainers.get(explainer)
    expl = get_explainer(explainer)
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    check_sizes(ds, prof)
    spec = ExtractorSpec(prof.extractor_epochs,
                         None if extractor_weights is None else os.fspath(extractor_weights))
    spec.check()  # a wrong --extractor-weights fails now, not after the training
    return expl, dev, ds, spec


def check_sizes(ds: Any, prof: Profile) -> None:
    """Refuse, before any training, a dataset too small for the protocol: the subset takes
    ``profile.n_images`` test images from 10 k-means clusters (PROTOCOL 4), so the test split
    needs at least that many; training needs at least two images (a batch BatchNorm can
    train on)."""
    from .protocol import CLUSTERS

    n_test, n_train = len(ds.test), len(ds.train)
    if n_test < prof.n_images:
        raise XRBenchError(
            f"dataset {ds.card.name}: its test split has {n_test} images; profile "
            f"{prof.name!r} takes {prof.n_images} of them ({CLUSTERS} clusters x "
            f"{prof.per_cluster}); add test images or use a smaller profile")
    if n_train < 2:
        raise XRBenchError(f"dataset {ds.card.name}: its train split has {n_train} images; "
                           "training needs at least two")


def subset_images(ds: Any, prof: Profile, dev: torch.device, spec: Any, *, progress: bool,
                   cache_root: Path | None, timing: dict[str, float]
                   ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(the frozen subset's manifest, its test images, their labels), fetched or built; the
    seconds of the extractor and of the subset go into ``timing``."""
    from .subset import get_manifest

    t1 = time.perf_counter()
    manifest, _ = get_manifest(ds, prof.per_cluster, dev, extractor=spec, progress=progress,
                               cache_root=cache_root, timing=timing)
    timing["subset"] = round(time.perf_counter() - t1 - timing["extractor"], 3)
    images, labels = ds.test.get_batch(torch.tensor(manifest["indices"]))
    return manifest, images, labels


def run_context(net: torch.nn.Module, model: str, expl: Any, ds: Any, prof: Profile,
                 images: torch.Tensor, labels: torch.Tensor, dev: torch.device, *, seed: int,
                 progress: bool, cache_root: Path | None, force: bool,
                 timing: dict[str, float], checkpoint_sha256: str, manifest_sha256: str,
                 shards: int | None, runner: Any) -> Any:
    """The :class:`~xrbench.engine.runtime.RunContext` every stage runs in; its ``base_key`` (what
    every stage's cache key starts from) names the checkpoint, manifest, explainer, seed, model
    and device; each stage adds its code version and parameters."""
    from .engine.runtime import RunContext, StageCache

    return RunContext(
        model=net, model_name=model, explainer=expl, dataset=ds, profile=prof,
        images=images.to(dev), labels=labels.to(dev), device=dev, seed=seed,
        progress=progress, cache=StageCache(cache_root, force=force), timing=timing,
        # no protocol version here: a stage's own code version and parameters say what it
        # computes, so a protocol bump recomputes only the stages it changed (v3: RPS)
        base_key={"checkpoint": checkpoint_sha256,
                  "manifest": manifest_sha256, "explainer": expl.describe(),
                  "seed": seed, "model": model, "device": dev.type},
        shards=shards or 1, executor=runner)


def run_all_stages(ctx: Any, runner: Any, shards: int | None, own_executor: bool) -> Any:
    """Every stage of the protocol on ``ctx`` (:func:`~xrbench.engine.stage.run_stages`), in
    ``shards`` shards, else as many as ``runner`` runs side by side; an executor ``evaluate``
    made is closed after, whatever happens."""
    from .engine.stage import run_stages
    from .stages import STAGES

    try:
        if shards is None:
            ctx.shards = runner.parallelism()
        return run_stages(ctx, STAGES)
    finally:
        if own_executor:
            runner.close()


def build_run_entry(ctx: Any, ran: Any, net: torch.nn.Module, model: str, beta: float,
                    explainer: str, manifest: dict[str, Any], defense_info: dict[str, Any],
                    ckpt_info: dict[str, Any]) -> dict[str, Any]:
    """The section-8 entry of the run (:func:`~xrbench.engine.entry.build_entry`), with the model's
    and the explainer's provenance."""
    from .engine.entry import build_entry
    from .models import count_parameters
    from .registry import explainers, models

    model_info = {"name": model, "parameters": count_parameters(net), "beta": beta,
                  "activation": "softplus", **models.get_entry(model).provenance()}
    return build_entry(ctx=ctx, stage_params=ran.params, metrics=ran.metrics,
                       flags=ran.flags, manifest=manifest, defense=defense_info,
                       checkpoint=ckpt_info, model_info=model_info,
                       explainer_info=explainers.get_entry(explainer).provenance(),
                       not_applicable=ran.not_applicable)


def step_seconds(timing: dict[str, float], ran: Any) -> dict[str, float]:
    """:attr:`xrbench.api.Result.seconds`: training, extractor, subset, each stage, total."""
    return {"train": timing["train"], "extractor": timing["extractor"],
            "subset": timing["subset"], **ran.seconds,
            "total": timing["total"]}
