"""Entry point of ``python -m pyexec.bench`` (see ``pyexec.bench.cli``). No state."""

import sys

from pyexec.bench.cli import main

# Under spawn, workers import this module as __mp_main__: they must not run the bench.
if __name__ == "__main__":
    sys.exit(main())
