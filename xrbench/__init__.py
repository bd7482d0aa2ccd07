"""xrbench: a benchmark and leaderboard harness for explanation robustness.

Importing the package registers the built-in datasets, models, explainers and defenses.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

from . import data, explainers, models  # noqa: E402,F401  (register built-ins)
from . import defenses  # noqa: E402,F401
