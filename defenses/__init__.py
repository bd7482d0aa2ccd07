"""Defenses: one file per defense; importing this package registers the built-ins."""

from . import normal  # noqa: F401
from . import hessian, l2_cosd, mat, sep, trades  # noqa: F401
from .base import Defense, Recipe, TrainState  # noqa: F401
