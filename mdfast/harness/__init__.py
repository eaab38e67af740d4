"""mdfast in EleutherAI's lm-evaluation-harness: the model ``mdfast`` and offline tasks (the harness extra).

Importing this package registers ``MDFastLM`` under the name ``mdfast``, so ``lm_eval.simple_evaluate(model="mdfast",
model_args={"pretrained": FOLDER, ...})`` works; ``python -m mdfast.harness`` is lm-eval's own command line with the
model registered, and ``mdfast eval harness`` runs lm-eval's evaluator with the shipped tasks.

- ``model.py``: the model; ``settings.py``: its model_args; ``generation.py``: ``generate_until``'s batched
  decoding; ``loglikelihood.py``: LLaDA's Monte Carlo log-likelihood.
- ``tasks/``: task YAMLs whose data are built locally (``TASKS_DIR``, for ``--include_path``).
"""

from __future__ import annotations

from .model import MODEL_NAME, MDFastLM, RollingLoglikelihoodUnsupported
from .settings import HarnessSettings, parse_model_args
from .tasks import TASK_NAMES, TASKS_DIR

__all__ = [
    "MODEL_NAME",
    "TASKS_DIR",
    "TASK_NAMES",
    "HarnessSettings",
    "MDFastLM",
    "RollingLoglikelihoodUnsupported",
    "parse_model_args",
]
