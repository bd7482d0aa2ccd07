"""Reading nested entry fields (entries are plain JSON dicts; a missing level is None)."""

from __future__ import annotations

from xrbench.columns import get_field, number

__all__ = ["get_field", "number"]
