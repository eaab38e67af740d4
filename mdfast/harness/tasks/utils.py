"""The functions the shipped task YAMLs name as ``!function utils.NAME`` (defined in ``data.py``).

lm-eval loads this file by its path, next to the YAMLs, not as a module of the package: so the imports are
absolute, and the builders' caches live in ``mdfast.harness.tasks.data``, shared by every load of this file.
Loading it also registers the model ``mdfast``: lm-eval's own command line, given the YAMLs as ``--tasks``
(a folder or files), resolves these functions before it looks the model up.
"""

import mdfast.harness  # noqa: F401  (registers the model "mdfast")
from mdfast.harness.tasks.data import (
    code_choice_dataset,
    code_infill_dataset,
    humaneval_dataset,
    humaneval_results,
    infill_results,
)

__all__ = ["code_choice_dataset", "code_infill_dataset", "humaneval_dataset", "humaneval_results", "infill_results"]
