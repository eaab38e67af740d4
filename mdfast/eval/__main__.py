"""``python -m mdfast.eval antibody|humaneval ...``: the same as ``mdfast eval ...``."""

import sys

from .cli import main

sys.exit(main())
