"""``python -m ukd``: the ``ukd`` command (see :mod:`ukd.cli`)."""

import sys

from ukd.cli import main

if __name__ == "__main__":
    sys.exit(main())
