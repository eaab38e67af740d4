"""Training what x-flow needs (SPEC 6): x-pred alignment and GRPO for the step policy; public names load lazily.

- ``align``: x-pred alignment of a model on its own answers (SPEC 6.1): ``XPredAlignmentTrainer``.
- ``grpo``, ``grpo_config``, ``rollouts``, ``policy_loss``, ``distributed``: GRPO for the step policy (SPEC 6.2):
  ``PolicyGRPOTrainer``, ``PolicyGRPOConfig``; ``policy_init``: a starting policy fitted to the default policy.
- ``recipe``: training recipes on real weights; ``records``: the JSONL and import-path readers of the commands.
- The code model's training is ``mdfast.code_model``. The commands are ``mdfast train align|grpo|mdlm|recipe``.

``from mdfast.train import XPredAlignmentTrainer`` imports only the module that defines it; a name whose extra
(accelerate, peft) is missing raises an ImportError naming ``pip install "mdfast[train]"`` when it is used.
"""

from __future__ import annotations

from mdfast._lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    "AlignmentCollator": "align",
    "XPredAlignmentTrainer": "align",
    "alignment_records": "align",
    "alignment_training_arguments": "align",
    "generated_answers": "align",
    "infilled_answers": "align",
    "sample_alignment_mask": "align",
    "xpred_alignment_loss": "align",
    "PolicyGRPOTrainer": "grpo",
    "PolicyGRPOConfig": "grpo_config",
    "Rollouts": "rollouts",
    "collect_rollouts": "rollouts",
    "group_advantages": "policy_loss",
    "policy_grpo_loss": "policy_loss",
    "policy_log_prob": "policy_loss",
    "token_rewards": "policy_loss",
    "DefaultFit": "policy_init",
    "default_policy_start": "policy_init",
    "fit_default_policy": "policy_init",
    "MetricsLog": "metrics_log",
    "import_function": "records",
    "read_jsonl": "records",
}
# the extras a name needs beyond the core dependencies (transformers.Trainer runs on accelerate)
_EXTRAS = {"XPredAlignmentTrainer": ("accelerate",), "alignment_training_arguments": ("accelerate",)}
_SUBMODULES = ("align", "distributed", "grpo", "grpo_config", "metrics_log", "policy_init", "policy_loss", "recipe")
_SUBMODULES += ("records", "rollouts")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, needs=_EXTRAS, extra="train")
