"""The Defense / Recipe base: a defense owns its mathematics, the trainer owns the loop.

A defense is a frozen :class:`Recipe` dataclass (every training hyperparameter, with unit
and source in a comment) and a ``loss(model, x, y) -> Tensor`` for one batch. Recipe fields
left ``None`` are filled from the protocol's per-dataset / per-model defaults by
:meth:`Recipe.resolve`; the entry and the checkpoint record the resolved recipe and its hash,
so an overridden recipe never masquerades as the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from xrbench.data import DatasetCard
from xrbench.errors import XRBenchError
from xrbench.registry import defenses
from xrbench.utils import hash_config

RESNET_FAMILY = ("resnet18", "wrn28_10", "mobilenetv2")


def is_small_model(model_name: str) -> bool:
    """convnet and lenet are the 'small' family of the RobustAGA recipes."""
    return model_name in ("convnet", "lenet")


@dataclass(frozen=True)
class Recipe:
    """The common trainer (SEP paper, section 5.1)."""

    epochs: int = 25  # passes over the training split
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # Adam learning rate

    def resolve(self, card: DatasetCard, model_name: str) -> "Recipe":
        """Fill dataset- or model-dependent ``None`` fields; the base has none."""
        return self

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


def _convert(raw: Any, field: dataclasses.Field, cls: type) -> Any:
    if not isinstance(raw, str):
        return raw
    default = field.default
    typ = str(field.type)
    try:
        if raw.lower() == "none":
            return None
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
