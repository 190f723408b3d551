"""``python -m dopax``: the dopax command line (see :mod:`dopax.io.cli`)."""

import sys

from dopax.io.cli import main

sys.exit(main())
