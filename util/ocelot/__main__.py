"""``python -m util.ocelot``: see :mod:`util.ocelot.cli`."""
import sys

from util.ocelot.cli import main

sys.exit(main())
