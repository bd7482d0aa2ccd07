"""The library's front door: what the CLI calls, usable from Python as well.

Data flows one way: names are resolved through the registries, a checkpoint is fetched or
trained, the frozen subset manifest is fetched or built, the metrics run, and a typed result
comes back; :mod:`xrbench.leaderboard` turns results into JSON files and tables.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data import load_dataset
from .models import DEFAULT_BETA
from .train import TrainedModel, get_trained_model
from .utils import resolve_device


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
