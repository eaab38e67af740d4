"""``python -m mdfast``: the ``mdfast`` command."""

import sys

from mdfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
