"""Reading nested entry fields (entries are plain JSON dicts; a missing level is None)."""

from __future__ import annotations

from xrbench.columns import Column, get_field, number

__all__ = ["active_columns", "get_field", "number"]


def active_columns() -> tuple[Column, ...]:
    """The columns of the protocol's stages (:func:`xrbench.stages.all_columns`; torch is
    imported on the first call, not when the leaderboard is)."""
    from xrbench.stages import all_columns

    return all_columns()
