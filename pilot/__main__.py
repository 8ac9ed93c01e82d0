"""``python -m pilot``: the ``pilot`` command, as launchers start it (``torchrun --nproc-per-node 4 -m pilot run``)."""

import sys

from pilot.cli import main

if __name__ == "__main__":
    sys.exit(main())
