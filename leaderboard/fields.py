"""Reading nested entry fields (entries are plain JSON dicts; a missing level is None)."""

from __future__ import annotations

from typing import Any, Mapping


def get_field(obj: Any, *keys: Any) -> Any:
    """``obj[k1][k2]...``, or None where a key is missing or a level is not a mapping."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    return obj
