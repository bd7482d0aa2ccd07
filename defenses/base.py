"""The Defense / Recipe base: a defense owns its mathematics, the trainer owns the loop.

A defense is a frozen :class:`Recipe` dataclass (every training hyperparameter, with unit
and source in a comment) and a ``loss(model, x, y) -> Tensor`` for one batch. Recipe fields
left ``None`` are filled from the protocol's per-dataset / per-model defaults by
:meth:`Recipe.resolve`; the entry and the checkpoint record the resolved recipe and its hash,
so an overridden recipe never masquerades as the reference.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from xrbench.data import DatasetCard
from xrbench.errors import XRBenchError
from xrbench.registry import defenses
from xrbench.utils import hash_config


def is_small_model(model_name: str) -> bool:
    """convnet and lenet are the 'small' family of the RobustAGA recipes."""
    return model_name in ("convnet", "lenet")


#: allowed values of recipe fields, by field name (the names recipes share): (lowest,
#: highest, whether the lowest is allowed, unit/meaning). Every number must also be finite.
RANGES: dict[str, tuple[float | None, float | None, bool, str]] = {
    "epochs": (1, None, True, "passes over the training split"),
    "batch_size": (2, None, True, "images per step (BatchNorm needs 2)"),
    "lr": (0, None, False, "Adam learning rate"),
    "eps": (0, 1, True, "L-inf radius in pixel units"),
    "pgd_steps": (0, None, True, "attack iterations"),
    "pgd_step_factor": (0, None, False, "step = factor * eps / steps"),
    "beta": (0, None, True, "TRADES KL weight"),
    "start_std": (0, None, True, "pixel units"),
    "sigma": (0, None, True, "noise std, pixel units"),
    "reg_warmup_fraction": (0, 1, True, "share of the recipe's epochs"),
    "reg_ramp_fraction": (0, 1, True, "share of the recipe's epochs"),
    "lambda_l2": (0, None, True, "regulariser weight"),
    "lambda_cos": (0, None, True, "regulariser weight"),
}


def _range_text(lo: float | None, hi: float | None, lo_incl: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_incl else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts) or "finite"


@dataclass(frozen=True)
class Recipe:
    """The common trainer (SEP paper, section 5.1).

    Every field is checked where it enters (:data:`RANGES` by field name, every float finite),
    so ``--set lr=-1`` or ``--epochs 0`` is one clear error before anything trains.
    """

    epochs: int = 25  # passes over the training split
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # Adam learning rate

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, (bool, str)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise XRBenchError(f"recipe field {f.name!r} = {value!r} of "
                                   f"{type(self).__qualname__} must be a finite number")
            if f.name not in RANGES or not isinstance(value, (int, float)):
                continue
            lo, hi, lo_incl, what = RANGES[f.name]
            ok = ((lo is None or value > lo or (lo_incl and value == lo))
                  and (hi is None or value <= hi))
            if not ok:
                raise XRBenchError(f"recipe field {f.name!r} = {value!r} is out of range: it "
                                   f"must be {_range_text(lo, hi, lo_incl)} ({what})")

    def resolve(self, card: DatasetCard, model_name: str) -> "Recipe":
        """Fill dataset- or model-dependent ``None`` fields; the base has none."""
        return self

    def wants_calibration(self, card: DatasetCard) -> bool:
        """Whether a field of this recipe comes from a calibration record on ``card``'s
        dataset (SEP's lambda off the paper's datasets). The caller above the defenses
        (:func:`xrbench.train.build_recipe`) looks it up and hands it over with
        :meth:`with_calibration` before :meth:`resolve`: a defense knows models,
        explainers and attacks, not where calibrations are kept."""
        return False

    def with_calibration(self, value: float, source: str) -> "Recipe":
        """This recipe with its calibrated field set to ``value`` (``source``: where the
        value comes from, recorded in the entry)."""
        raise NotImplementedError(f"{type(self).__qualname__} takes no calibration")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return hash_config({"recipe": type(self).__qualname__, **self.to_dict()})

    @classmethod
    def from_overrides(cls, overrides: dict[str, str]) -> "Recipe":
        """Build from ``--set key=value`` strings, converting to each field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in overrides.items():
            key = key.rstrip("_") + ("_" if key.rstrip("_") + "_" in fields else "")
            if key not in fields:
                raise XRBenchError(
                    f"recipe {cls.__qualname__} has no field {key!r}; fields: "
                    f"{', '.join(fields)}"
                )
            kwargs[key] = _convert(raw, fields[key], cls)
        return cls(**kwargs)


def field_notes(cls: type) -> dict[str, str]:
    """The comment written beside each recipe field in its class body (unit, default rule,
    source), read from the source of ``cls`` and its bases; ``{}`` where there is no source."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            m = re.match(r"\s+(\w+)\s*:[^=#]*=[^#]*#\s*(.+)$", line)
            if m:
                notes[m.group(1)] = m.group(2).strip()
    return notes


def _convert(raw: Any, field: dataclasses.Field, cls: type) -> Any:
    if not isinstance(raw, str):
        return raw
    default = field.default
    typ = str(field.type)
    try:
        if raw.lower() in ("none", "null"):
            if default is None or "None" in typ or "Optional" in typ:
                return None
            raise XRBenchError(f"recipe field {field.name!r} of {cls.__qualname__} cannot be "
                               f"none: it takes {typ} (default {default!r})")
        if isinstance(default, bool) or "bool" in typ:
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
            raise ValueError(raw)
        if isinstance(default, int) or typ.startswith("int"):
            return int(raw)
        if isinstance(default, float) or "float" in typ:
            return float(raw)
    except ValueError:
        raise XRBenchError(f"recipe field {field.name!r} of {cls.__qualname__}: cannot read "
                           f"{raw!r} as {typ}") from None
    return raw


@dataclass
class TrainState:
    """What a loss may read besides the batch; the trainer keeps it current.

    ``epoch`` is the progress in epochs as a float (0 at the start, ``recipe.epochs`` at the
    end), so schedules can ramp within an epoch; ``generator`` is the seeded source of all of
    a defense's randomness, on ``device``.
    """

    card: DatasetCard
    model_name: str
    generator: torch.Generator
    device: torch.device
    epoch: float = 0.0


class Defense:
    """Base class. Subclasses set ``Recipe`` and ``loss`` (and a docstring, whose first line
    is the description ``xrbench list defenses`` shows unless the register call gives one).

    ``name`` is the name the class is registered under (``defenses.register("name")`` or the
    entry point's name); the registry sets it, so it is stated once.
    """

    name: ClassVar[str] = "defense"
    Recipe: ClassVar[type[Recipe]] = Recipe

    def __init__(self, recipe: Recipe, state: TrainState) -> None:
        self.recipe = recipe
        self.state = state

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar training loss for one batch: x (B, C, S, S) pixels in [0, 1], y (B,)."""
        raise NotImplementedError


def check_defense(name: str, obj: Any) -> None:
    """The defenses registry's check: ``obj`` must be a :class:`Defense` subclass; it gets its
    registered ``name``. Raises :class:`XRBenchError` otherwise."""
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise XRBenchError(f"defense {name!r} must be a subclass of "
                           f"xrbench.defenses.base.Defense, got {obj!r}; subclass Defense and "
                           "implement loss(model, x, y)")
    stated = obj.__dict__.get("name")
    if stated is not None and stated != name:
        raise XRBenchError(f"defense class {obj.__qualname__} states name {stated!r} but is "
                           f"registered as {name!r}; remove its `name` attribute (the "
                           "registered name is the defense's name)")
    obj.name = name


defenses.check = check_defense
