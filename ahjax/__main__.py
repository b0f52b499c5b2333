"""``python -m ahjax COMMAND``: see :mod:`ahjax.cli`."""

import sys

from ahjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
