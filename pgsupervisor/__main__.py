"""``python -m pgsupervisor``: the same program as the ``pgsupervisor`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
