"""``python -m dopax``: the dopax command line (see :mod:`dopax.cli.main`)."""

import sys

from dopax.cli.main import main

sys.exit(main())
