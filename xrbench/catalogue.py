"""What ``xrbench list`` shows, answered without importing torch.

Built-ins come from ``builtins.json`` beside this file, written from the registries by
``python -m xrbench.catalogue`` (``tests/test_catalogue.py`` fails when it is out of date, so
it cannot drift from the code). Plugins come from their entry points' metadata (name and
distribution, the distribution's summary as description) without importing them;
``xrbench list KIND --load`` imports everything through the registries instead (slower, and
it reports a plugin that fails to load or clashes with another name).
"""

from __future__ import annotations

import json
import os
from importlib import metadata, resources
from typing import Any

KINDS = ("datasets", "models", "explainers", "defenses", "attacks")
PLUGIN_AUTOLOAD_ENV = "XRBENCH_DISABLE_PLUGIN_AUTOLOAD"


def builtins() -> dict[str, list[list[str]]]:
    """``{kind: [[display name, description], ...]}`` of the built-ins."""
    text = resources.files("xrbench").joinpath("builtins.json").read_text("utf-8")
    return json.loads(text)


def from_registries() -> dict[str, list[list[str]]]:
    """The same table read from the registries (imports every built-in: slow)."""
    from . import registry

    return {kind: [[e.display_name, e.description] for e in getattr(registry, kind).entries()
                   if e.source == "xrbench"] for kind in KINDS}


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, description) rows of ``kind``: built-ins, then installed plugins (marked with
    their distribution), sorted by name; nothing is imported."""
    rows = [(name, desc) for name, desc in builtins()[kind]]
    taken = {name.split(":")[0] for name, _ in rows}
    if os.environ.get(PLUGIN_AUTOLOAD_ENV, "") in ("", "0"):
        for ep in metadata.entry_points(group=f"xrbench.{kind}"):
            dist: Any = ep.dist
            name = dist.name if dist is not None else "<unknown distribution>"
            summary = (dist.metadata.get("Summary") or "") if dist is not None else ""
            clash = " (name taken: `--load` reports the clash)" if ep.name in taken else ""
            rows.append((ep.name, f"{summary} [plugin {name}]{clash}".strip()))
    return sorted(rows)


def main() -> None:  # pragma: no cover - a maintenance command
    """Rewrite builtins.json from the registries."""
    from pathlib import Path

    path = Path(__file__).with_name("builtins.json")
    path.write_text(json.dumps(from_registries(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    main()
