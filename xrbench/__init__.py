"""xrbench: a benchmark and leaderboard harness for explanation robustness.

Importing the package is cheap (no torch): the built-in datasets, models, explainers and
defenses register when their registry is first asked for a name (:mod:`xrbench.registry`),
so ``xrbench --help``, ``--version`` and ``list`` answer at once.
"""

__version__ = "0.1.0"
