"""Deprecated import paths: a module that moved keeps its old name for one release."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_module(old: str, new: str) -> None:
    """Make ``old`` the module ``new`` (the same object), warning once with a DeprecationWarning.

    Run as a command (``python -m <old>``), it exits with one line pointing at the ``mdfast`` verbs.
    """
    if old == "__main__":
        name = sys.modules["__main__"].__spec__.name
        sys.exit(f"python -m {name}: no longer a command; {name} moved to {new}; see `mdfast --help` for the verbs")
    warnings.warn(f"{old} moved to {new}; the old name goes in the next release", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
