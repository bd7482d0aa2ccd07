"""Registry: duplicate names, unknown names, parametrized names, entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from xrbench.errors import XRBenchError
from xrbench.registry import Registry, defenses


def test_duplicate_name_is_an_error():
    reg: Registry = Registry("things")
    reg.add("a", object(), "first")
    with pytest.raises(XRBenchError, match="duplicate"):
        reg.add("a", object(), "second")


def test_unknown_name_lists_valid_names():
    reg: Registry = Registry("things")
    reg.add("alpha", object(), "x")
    reg.add("beta", object(), "y")
    with pytest.raises(XRBenchError, match="valid names: alpha, beta"):
        reg.get("gamma")


def test_parametrized_name_passes_its_argument():
    reg: Registry = Registry("things")
    reg.add("timm", lambda arg, k=1: (arg, k), "x", takes_arg=True)
    assert reg.create("timm:resnet18", k=None) == ("resnet18", 1)  # None kwargs dropped
    assert reg.names() == ["timm:NAME"]
    with pytest.raises(XRBenchError, match="needs an argument"):
        reg.create("timm")


def test_create_drops_none_kwargs():
    reg: Registry = Registry("things")
    reg.add("f", lambda a=5: a, "x")
    assert reg.create("f", a=None) == 5
    assert reg.create("f", a=7) == 7


def _fake_distribution(tmp_path: Path, dist: str, group: str, name: str, target: str) -> None:
    """A real installed-distribution layout: a .dist-info folder with entry_points.txt."""
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("xr_fake_plugin")]:
        del sys.modules[mod]


def test_entry_point_defense_is_found_through_the_registry(plugin_path):
    (plugin_path / "xr_fake_plugin_ok.py").write_text(textwrap.dedent('''
        import torch.nn.functional as F
        from xrbench.defenses.base import Defense, Recipe

        class Smooth(Defense):
            """label-smoothed cross-entropy (test plugin)"""
            name = "fake_smooth"
            Recipe = Recipe
            def loss(self, model, x, y):
                return F.cross_entropy(model(x), y, label_smoothing=0.1)
    '''))
    _fake_distribution(plugin_path, "xr-fake-plugin-ok", "xrbench.defenses", "fake_smooth",
                       "xr_fake_plugin_ok:Smooth")
    reg: Registry = Registry("defenses")
    assert "fake_smooth" in reg.names()
    entry = reg.get_entry("fake_smooth")
    assert entry.obj.__name__ == "Smooth"
    assert entry.source == "plugin xr-fake-plugin-ok"
    assert "label-smoothed" in entry.description


def test_failing_plugin_names_its_distribution(plugin_path):
    (plugin_path / "xr_fake_plugin_bad.py").write_text("raise ImportError('boom')\n")
    _fake_distribution(plugin_path, "xr-fake-plugin-bad", "xrbench.defenses", "bad",
                       "xr_fake_plugin_bad:Thing")
    reg: Registry = Registry("defenses")
    with pytest.raises(XRBenchError, match="xr-fake-plugin-bad.*boom"):
        reg.names()


def test_autoload_can_be_disabled(plugin_path, monkeypatch):
    (plugin_path / "xr_fake_plugin_bad.py").write_text("raise ImportError('boom')\n")
    _fake_distribution(plugin_path, "xr-fake-plugin-bad", "xrbench.defenses", "bad",
                       "xr_fake_plugin_bad:Thing")
    monkeypatch.setenv("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg: Registry = Registry("defenses")
    reg.add("normal", object(), "x")
    assert reg.names() == ["normal"]


def test_builtin_defense_registered():
    assert "normal" in defenses.names()
