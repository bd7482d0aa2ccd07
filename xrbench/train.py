"""The one training loop (nanoGPT's habit: short enough to read in one sitting).

A defense supplies ``loss(model, x, y)`` and a frozen recipe; this module owns the loop, the
Adam optimizer, the progress bar, per-epoch partial checkpoints (resume after an interrupt)
and NaN handling (stop, keep the last good epoch, say what to do).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, fastgrad
from .chunking import chunk_slices
from .checkpoints import (CheckpointKey, load_partial, load_weights, partial_path, read_sidecar,
                          save_checkpoint, save_partial)
from .data import Dataset, ImageSplit
from .errors import XRBenchError
from .models import DEFAULT_BETA, XRModel, create_model
from .registry import defenses
from .utils import file_lock, generator, hash_config, lock_file

log = logging.getLogger(__name__)


class NonFiniteLoss(XRBenchError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainedModel:
    """A model with its checkpoint path, sha256, sidecar metadata and whether it was reused."""

    model: XRModel
    path: Path
    sha256: str
    meta: dict[str, Any]
    reused: bool
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: ImageSplit, device: torch.device,
                      batch_size: int = 512) -> float:
    """Clean accuracy on a whole split, in percent."""
    was = model.training
    model.eval()
    correct = 0
    for s in chunk_slices(len(split), batch_size):
        x, y = split.get_batch(torch.arange(s.start, s.stop))
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(split))


def backward_to_parameters(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Set each parameter's ``.grad`` (None beforehand) to d loss / d parameter, as
    ``loss.backward()`` would, but without the gradients of other leaves.

    The double-backward defenses differentiate w.r.t. an input leaf (``z`` or ``x``, PROTOCOL
    section 7); ``loss.backward()`` would also accumulate ``d loss / d input`` into that leaf,
    one more pass through the first convolution that nothing reads. Naming the parameters
    as the ``inputs`` lets autograd skip it (about 8 ms, 1-3 % of a ``hessian`` / ``l2_cosd``
    step on LeNet at batch 64). The parameter gradients are bitwise the same (the same nodes run in the
    same order; ``tests/test_fast_training.py``) and are stored with the parameter's strides,
    as ``loss.backward()`` stores them. Parameters the loss does not reach keep ``.grad``
    None.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            continue
        if g.stride() != p.stride():
            g = torch.empty_like(p).copy_(g)  # the parameter's own layout
        p.grad = g


def fit(model: nn.Module, defense: Any, split: ImageSplit, *, epochs: int, batch_size: int,
        lr: float, data_generator: torch.Generator, device: torch.device,
        progress: bool = True, start_epoch: int = 0,
        optimizer_state: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, torch.optim.Optimizer, dict[str, float]], None] | None = None,
        label: str = "train") -> list[dict[str, float]]:
    """Train ``model`` in place with Adam on ``defense.loss`` for epochs ``start_epoch..epochs``.

    ``data_generator`` (CPU) shuffles the split each epoch; ``defense.state.epoch`` is set to
    the fractional epoch before each step. Raises :class:`NonFiniteLoss` on a NaN/inf loss.
    ``label`` names the step on the progress bar and in the per-epoch log lines (the subset's
    extractor trains as its own step). Returns one record per epoch: mean loss and seconds.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    n = len(split)
    steps = max(1, (n + batch_size - 1) // batch_size)
    history: list[dict[str, float]] = []
    bar = tqdm(total=(epochs - start_epoch) * steps, disable=not progress, unit="step",
               desc=label, dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=data_generator)
        model.train()
        total, count = 0.0, 0
        bar.set_description(f"{label} epoch {epoch + 1}/{epochs}")
        for step in range(steps):
            bar.update(1)
            idx = perm[step * batch_size:(step + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single image
                continue
            x, y = split.get_batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            defense.state.epoch = epoch + step / steps
            try:
                loss = defense.loss(model, x, y)
            except (XRBenchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a plugin's bug is one line naming the plugin
                dist = _plugin_distribution(defense)
                if dist is None:
                    raise  # xrbench's own defense: a bug of ours, with its traceback
                detail = " ".join(str(exc).split())[:300]
                raise XRBenchError(
                    f"defense {defense.name!r} from the plugin distribution {dist!r} failed in "
                    f"its loss at epoch {epoch + 1}: {type(exc).__name__}: {detail}; fix the "
                    f"plugin (or uninstall {dist})") from exc
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss became {float(loss.detach())} at epoch "
                                    f"{epoch + 1}, "
                                    f"step {step + 1}")
            opt.zero_grad(set_to_none=True)
            backward_to_parameters(loss, params)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / max(1, count):.4f}")
        record = {"epoch": epoch + 1, "loss": total / max(1, count),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        log.info("%sepoch %d/%d loss %.4f (%.1f s)", "" if label == "train" else f"{label} ",
                 epoch + 1, epochs, record["loss"], record["seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, opt, record)
    bar.close()
    return history


def build_recipe(defense_name: str, card: Any, model_name: str,
                 overrides: dict[str, str] | None = None) -> Any:
    """The defense's recipe with ``--set`` overrides, a calibrated field handed over where
    the recipe wants one (SEP's lambda off the paper's datasets: the shipped or the user's
    record, :func:`xrbench.calibrate.find_calibration`, else an error naming the command
    that makes it), dataset/model defaults resolved."""
    cls = defenses.get(defense_name)
    recipe = cls.Recipe.from_overrides(dict(overrides or {}))
    if recipe.wants_calibration(card):
        from .calibrate import find_calibration, missing_calibration

        found = find_calibration(defense_name, card.name, model_name)
        if found is None:
            raise missing_calibration(defense_name, card, model_name)
        recipe = recipe.with_calibration(found.chosen, found.source)
    return recipe.resolve(card, model_name)


def checkpoint_key(card: Any, model_name: str, defense_name: str,
                   overrides: dict[str, str] | None = None, seed: int = 0,
                   beta: float = DEFAULT_BETA) -> tuple[CheckpointKey, Any]:
    """(cache key, resolved recipe) of the checkpoint :func:`get_trained_model` makes or
    reuses; ``key.path(cache_root).is_file()`` says whether it is cached already."""
    recipe = build_recipe(defense_name, card, model_name, overrides)
    model_cfg = {"name": model_name, "beta": beta, "activation": "softplus"}
    variant = ("fast_double_backward",) if fastgrad.enabled() else ()
    return (CheckpointKey(card.name, model_cfg, defense_name, recipe.to_dict(), seed, variant),
            recipe)


def get_trained_model(dataset: Dataset, model_name: str = "convnet", defense_name: str = "normal",
                      *, overrides: dict[str, str] | None = None, seed: int = 0,
                      device: torch.device = torch.device("cpu"), retrain: bool = False,
                      progress: bool = True, beta: float = DEFAULT_BETA,
                      cache_root: Path | None = None, label: str = "train") -> TrainedModel:
    """The checkpoint for (dataset, model, defense, recipe, seed): loaded from the cache when
    present (sha256-checked), else trained (resuming a partial run) and cached. ``label``
    names the training on its progress bar and log lines."""
    defense_cls = defenses.get(defense_name)
    key, recipe = checkpoint_key(dataset.card, model_name, defense_name, overrides, seed, beta)
    path = key.path(cache_root)

    # one process trains a key at a time; a second one waits, then reuses the checkpoint
    with file_lock(lock_file(f"checkpoint-{hash_config(str(path.resolve()))}", cache_root)):
        return _load_or_train(dataset, model_name, defense_cls, defense_name, recipe, key,
                              path, seed=seed, device=device, retrain=retrain,
                              progress=progress, beta=beta, label=label)


def _plugin_distribution(defense: Any) -> str | None:
    """The distribution of a plugin defense (None for a built-in or an unregistered one)."""
    try:
        entry = defenses.get_entry(type(defense).name)
    except XRBenchError:
        return None
    return entry.distribution if entry.source.startswith("plugin ") else None


def _load_or_train(dataset: Dataset, model_name: str, defense_cls: Any, defense_name: str,
                   recipe: Any, key: CheckpointKey, path: Path, *, seed: int,
                   device: torch.device, retrain: bool, progress: bool, beta: float,
                   label: str = "train") -> TrainedModel:
    card = dataset.card
    model_cfg = key.model
    torch.manual_seed(seed)
    model = create_model(model_name, card, beta=beta).to(device)
    meta = read_sidecar(path) if path.is_file() else None
    if meta is not None and not retrain:
        digest = load_weights(model, path)
        model.to(device).eval()
        return TrainedModel(model, path, digest, meta, reused=True)

    data_gen = generator(seed)
    state_gen = generator(seed + 1, device)
    from xrbench.defenses.base import TrainState

    defense = defense_cls(recipe, TrainState(card, model_name, state_gen, device))
    start, opt_state = 0, None
    # epochs and seconds of earlier, interrupted processes: the checkpoint's history covers
    # the whole training, not only the process that finished it
    history: list[dict[str, float]] = []
    earlier_seconds = 0.0
    partial = None if retrain else load_partial(path)
    if partial is not None and partial.get("key") == key.digest():
        history = list(partial.get("history", []))
        earlier_seconds = float(partial.get("train_seconds", 0.0))
        model.load_state_dict(partial["model"])
        opt_state = partial["optimizer"]
        start = int(partial["epoch"])
        data_gen.set_state(partial["data_rng"])
        state_gen.set_state(partial["defense_rng"])
        log.info("resuming %s from epoch %d", path.name, start)

    def on_epoch_end(epoch: int, opt: torch.optim.Optimizer, record: dict[str, float]) -> None:
        history.append(record)
        save_partial(path, {"key": key.digest(), "epoch": epoch,
                            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                            "optimizer": opt.state_dict(), "data_rng": data_gen.get_state(),
                            "defense_rng": state_gen.get_state(), "history": history,
                            "train_seconds": earlier_seconds + time.perf_counter() - t0})

    if device.type == "cpu" and torch.get_num_threads() > 1:
        log.info("training on %d CPU threads: CPU training gives the same weights only at the "
                 "same thread count, and xrbench's published checkpoints were trained with "
                 "one (OMP_NUM_THREADS=1 reproduces them)", torch.get_num_threads())
    if fastgrad.enabled():
        log.warning("%s=1: training with the fast double backward; the weights differ by "
                    "float rounding from the default path's (recorded in the checkpoint)",
                    fastgrad.ENV_VAR)
    t0 = time.perf_counter()
    try:
        fit(model, defense, dataset.train, epochs=recipe.epochs,
                      batch_size=recipe.batch_size, lr=recipe.lr, data_generator=data_gen,
                      device=device, progress=progress, start_epoch=start,
                      optimizer_state=opt_state, on_epoch_end=on_epoch_end, label=label)
    except NonFiniteLoss as exc:
        kept = partial_path(path)
        where = f"the last good epoch is kept in {kept}" if kept.is_file() else "no epoch finished"
        raise NonFiniteLoss(f"{exc}; {where}. Lower the learning rate or the regulariser "
                            "weight (e.g. --set lr=5e-4)") from None
    seconds = earlier_seconds + time.perf_counter() - t0
    model.eval()
    test_acc = evaluate_accuracy(model, dataset.test, device)
    import platform

    meta = {"dataset": card.name, "model": model_cfg, "defense": defense_name,
            "recipe": recipe.to_dict(), "recipe_hash": recipe.hash(), "seed": seed,
            "key": key.digest(), "test_acc": test_acc, "train_seconds": seconds,
            "history": history, "xrbench_version": __version__,
            "torch_version": torch.__version__, "device": str(device),
            "python": platform.python_version()}
    if fastgrad.enabled():  # float rounding differs from the default path (xrbench.fastgrad)
        meta["fast_double_backward"] = True
    digest = save_checkpoint(path, model, meta)
    partial_path(path).unlink(missing_ok=True)
    meta["sha256"] = digest
    return TrainedModel(model, path, digest, meta, reused=False, train_seconds=seconds,
                        history=history)
