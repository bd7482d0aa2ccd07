"""``python -m xrbench.cli ...``: the ``xrbench`` command."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
