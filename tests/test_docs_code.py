"""docs/writing-a-defense.md stays true: its code blocks, run as written (the recipe, the loss,
then the registration of that class), give a defense that trains and is scored (issue 23:
the page once called torch.randn without importing torch)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xrbench import api

DOC = Path(__file__).parents[1] / "docs" / "writing-a-defense.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_writing_a_defense_blocks_run(monkeypatch, tmp_path) -> None:
    from xrbench.registry import defenses

    import sys
    import types

    recipe, loss, register = _blocks()
    module = types.ModuleType("my_defense_doc")  # a module, as the user's file would be
    monkeypatch.setitem(sys.modules, "my_defense_doc", module)
    ns = module.__dict__
    exec(compile(recipe, f"{DOC}:recipe", "exec"), ns)
    exec(compile(loss, f"{DOC}:loss", "exec"), ns)
    # the registration block, applied to the class the page wrote (its `...` body stands for
    # the class above)
    assert '@defenses.register("my_defense"' in register
    defenses.load_plugins()
    monkeypatch.setattr(defenses, "_entries", dict(defenses._entries))
    defenses.add("my_defense", ns["MyDefense"], "one-line description")
    trained = api.train("digits", "convnet", "my_defense", overrides={"epochs": "1"},
                        progress=False, cache_root=tmp_path / "cache", device="cpu")
    assert trained.meta["recipe"]["sigma"] == pytest.approx(0.1)
    assert trained.meta["recipe"]["eps"] == pytest.approx(0.3)  # resolved from the card
    assert trained.meta["history"][0]["loss"] > 0
