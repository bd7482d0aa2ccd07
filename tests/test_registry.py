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
    info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"  # as wheels name it
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


def _write_plugin(plugin_path: Path, dist: str, name: str, body: str) -> None:
    module = dist.replace("-", "_")
    (plugin_path / f"{module}.py").write_text(textwrap.dedent(body))
    _fake_distribution(plugin_path, dist, "xrbench.defenses", name, f"{module}:Thing")


_DEFENSE = '''
    import torch.nn.functional as F
    from xrbench.defenses.base import Defense, Recipe

    class Thing(Defense):
        """cross-entropy again (test plugin)"""
        Recipe = Recipe
        def loss(self, model, x, y):
            return F.cross_entropy(model(x), y)
'''


def test_plugin_that_reuses_a_builtin_name_is_an_error_naming_both(plugin_path, monkeypatch):
    _write_plugin(plugin_path, "xr-fake-plugin-normal", "normal", _DEFENSE)
    monkeypatch.setattr(defenses, "_plugins_loaded", False)  # look at the entry points again
    with pytest.raises(XRBenchError) as err:
        defenses.get("normal")
    msg = str(err.value)
    assert "duplicate defense name 'normal'" in msg
    assert "xrbench (built-in)" in msg and "'xr-fake-plugin-normal'" in msg


def test_two_plugins_with_one_name_is_an_error_naming_both(plugin_path):
    _write_plugin(plugin_path, "xr-fake-plugin-one", "twin", _DEFENSE)
    _write_plugin(plugin_path, "xr-fake-plugin-two", "twin", _DEFENSE)
    reg: Registry = Registry("defenses")
    reg.check = defenses.check
    both = "'xr-fake-plugin-(one|two)'.*'xr-fake-plugin-(one|two)'"
    with pytest.raises(XRBenchError, match=both):
        reg.names()


def test_plugin_clash_on_the_command_line_is_one_line_and_exit_2(plugin_path):
    import os
    import subprocess

    _write_plugin(plugin_path, "xr-fake-plugin-normal", "normal", _DEFENSE)
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    env.pop("XRBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    run = subprocess.run([sys.executable, "-m", "xrbench.cli", "list", "defenses", "--load"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "xr-fake-plugin-normal" in lines[0] and "built-in" in lines[0]
    # the quick listing (nothing imported) marks the clash instead
    quick = subprocess.run([sys.executable, "-m", "xrbench.cli", "list", "defenses"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert quick.returncode == 0
    assert any(ln.startswith("normal") and "name taken" in ln for ln in quick.stdout.splitlines())


def test_a_registered_defense_must_subclass_defense(plugin_path):
    _write_plugin(plugin_path, "xr-fake-plugin-func", "func", '''
        def Thing(model, x, y):
            return 0.0
    ''')
    reg: Registry = Registry("defenses")
    reg.check = defenses.check
    with pytest.raises(XRBenchError, match="'func' must be a subclass of .*Defense"):
        reg.names()


def test_a_defense_is_named_by_its_registration_only(plugin_path):
    _write_plugin(plugin_path, "xr-fake-plugin-named", "smooth", _DEFENSE)
    reg: Registry = Registry("defenses")
    reg.check = defenses.check
    assert reg.get("smooth").name == "smooth"  # the entry point's name, set by the registry
    assert defenses.get("sep_neg").name == "sep_neg"  # built-ins too
    from xrbench.defenses.base import Defense

    class Stated(Defense):
        name = "other"

    with pytest.raises(XRBenchError, match="states name 'other' but is registered as 'mine'"):
        reg.add("mine", Stated)


# --- provenance: the distribution (and version) behind a model or explainer --------------------

_PARTS = '''
    from xrbench.explainers import DeepLift
    from xrbench.models import ConvNet

    class TinyConv(ConvNet):
        """a narrow ConvNet (test plugin)"""
        def __init__(self, card, act):
            super().__init__(card, act, widths=(8, 8, 16))

    class PluginDeepLift(DeepLift):
        """captum DeepLift under another name (test plugin, evaluation only)"""
        name = "plugin_deeplift"
'''
_PARTS_PROVENANCE = {"source": "plugin xr-fake-plugin-parts",
                     "distribution": {"name": "xr-fake-plugin-parts", "version": "2.5"}}


def _parts_distribution(plugin_path: Path) -> None:
    """One distribution (version 2.5) that provides a model and an explainer."""
    (plugin_path / "xr_fake_plugin_parts.py").write_text(textwrap.dedent(_PARTS))
    info = plugin_path / "xr_fake_plugin_parts-2.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: xr-fake-plugin-parts\nVersion: 2.5\n")
    (info / "entry_points.txt").write_text(
        "[xrbench.models]\ntiny_conv = xr_fake_plugin_parts:TinyConv\n\n"
        "[xrbench.explainers]\nplugin_deeplift = xr_fake_plugin_parts:PluginDeepLift\n")


@pytest.fixture
def global_plugins(plugin_path, monkeypatch):
    """The global model and explainer registries, looking at the entry points again (their
    state is restored afterwards)."""
    from xrbench.registry import explainers, models

    for reg in (models, explainers):
        reg.load_plugins()
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_plugins_loaded", False)
    return plugin_path


def test_plugin_model_and_explainer_carry_their_distribution_and_version(plugin_path):
    from xrbench import __version__
    from xrbench.registry import explainers, models

    # the global registries first, before the plugin exists (they load entry points once)
    builtin = {"source": "xrbench", "distribution": {"name": "xrbench", "version": __version__}}
    assert models.get_entry("timm:resnet18").provenance() == builtin
    assert explainers.get_entry("lrp").provenance() == builtin
    _parts_distribution(plugin_path)
    assert Registry("models").get_entry("tiny_conv").provenance() == _PARTS_PROVENANCE
    assert Registry("explainers").get_entry("plugin_deeplift").provenance() == _PARTS_PROVENANCE
    gone = Registry("things")
    gone.add("x", object(), source="plugin xr-not-installed")
    assert gone.get_entry("x").provenance()["distribution"] == {"name": "xr-not-installed",
                                                                "version": None}


def test_a_plugin_that_registers_itself_is_recorded_with_its_distribution(global_plugins):
    from xrbench.registry import explainers

    (global_plugins / "xr_fake_plugin_self.py").write_text(textwrap.dedent('''
        from xrbench.explainers import GradXInput
        from xrbench.registry import explainers

        @explainers.register("self_registered")
        class Mine(GradXInput):
            """grad x input, registered by the plugin itself on import"""
            name = "self_registered"
    '''))
    _fake_distribution(global_plugins, "xr-fake-plugin-self", "xrbench.explainers",
                       "self_registered", "xr_fake_plugin_self:Mine")
    entry = explainers.get_entry("self_registered")
    assert entry.source == "plugin xr-fake-plugin-self"
    assert entry.provenance()["distribution"] == {"name": "xr-fake-plugin-self", "version": "1.0"}


@pytest.mark.slow
def test_an_entry_records_the_distribution_of_a_plugin_model_and_explainer(global_plugins,
                                                                          tmp_path):
    from xrbench import api
    from xrbench.leaderboard.schema import read_entry

    _parts_distribution(global_plugins)
    res = api.evaluate("normal", model="tiny_conv", explainer="plugin_deeplift",
                       profile="smoke", overrides={"epochs": "1"}, out=tmp_path / "out",
                       progress=False, cache_root=tmp_path / "cache", device="cpu")
    e = read_entry(res.path)  # schema-valid
    for part in ("model", "explainer"):
        assert {k: e[part][k] for k in ("source", "distribution")} == _PARTS_PROVENANCE, part
    assert e["model"]["name"] == "tiny_conv" and e["explainer"]["name"] == "plugin_deeplift"
    assert e["defense"]["source"] == "xrbench"
    # evaluation-only (captum) like the explainer it wraps: the attacks are n/a, not a failure
    assert set(e["not_applicable"]) == {"manipulation", "ensemble", "adv_insertion", "gallery"}


def test_a_plugin_defense_whose_loss_raises_is_one_line_naming_it(plugin_path, monkeypatch,
                                                                   tmp_path):
    """Issue 23 item 2: docs' defense without ``import torch`` raised a bare NameError; a
    plugin's failing loss ends in one line naming its distribution."""
    from xrbench import api
    from xrbench.registry import defenses

    defenses.load_plugins()
    monkeypatch.setattr(defenses, "_entries", dict(defenses._entries))
    monkeypatch.setattr(defenses, "_plugins_loaded", False)
    (plugin_path / "xr_fake_plugin_noimport.py").write_text(textwrap.dedent('''
        from xrbench.defenses.base import Defense, Recipe

        class Noisy(Defense):
            """noise augmentation that forgot to import torch (test plugin)"""
            Recipe = Recipe
            def loss(self, model, x, y):
                return torch.randn(1)  # noqa: F821 - the bug under test
    '''))
    _fake_distribution(plugin_path, "xr-fake-plugin-noimport", "xrbench.defenses", "noisy",
                       "xr_fake_plugin_noimport:Noisy")
    with pytest.raises(XRBenchError, match="defense 'noisy' from the plugin distribution "
                                           "'xr-fake-plugin-noimport' failed in its loss at "
                                           "epoch 1: NameError: name 'torch' is not defined"):
        api.train("digits", "convnet", "noisy", overrides={"epochs": "1"}, progress=False,
                  cache_root=tmp_path / "cache", device="cpu")
