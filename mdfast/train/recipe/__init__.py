"""Training recipes on real weights, each a command: ``mdfast train recipe <name>``.

- ``antibody_policy``: x-flow's two trainings on AntiBERTy and the antibody benchmark (SPEC 7), in stages:
  ``align_stage`` (SPEC 6.1), ``grpo_stage`` (SPEC 6.2), ``evaluate_stage`` and ``ship_stage``; ``common``
  holds what they share.
"""
