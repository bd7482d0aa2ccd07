"""``xrbench --help``, ``--version`` and ``list`` answer without importing torch, and the
built-ins table they read is the registries' own."""

from __future__ import annotations

import subprocess
import sys

from xrbench.catalogue import builtins, from_registries, listing


def test_builtins_json_is_current():
    assert builtins() == from_registries(), (
        "xrbench/builtins.json is out of date: run "
        "`XRBENCH_DISABLE_PLUGIN_AUTOLOAD=1 python -m xrbench.catalogue`")


def test_listing_shows_builtins_and_plugins_without_loading_them():
    rows = dict(listing("defenses"))
    assert {"normal", "mat", "sep_neg"} <= set(rows)
    assert "[plugin xrbench-example-defense]" in rows["gaussian_aug"]


def test_the_quick_commands_do_not_import_torch():
    code = ("import sys\n"
            "from xrbench.cli import main\n"
            "for argv in (['--version'], ['list', 'models'], ['list', 'defenses']):\n"
            "    assert main(argv) == 0\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'captum', 'timm', 'sklearn')\n"
            "               if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
