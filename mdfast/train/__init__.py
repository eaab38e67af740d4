"""Training what x-flow needs (SPEC 6) and the small code model of SPEC 7; import the submodules.

- ``align``: x-pred alignment of a model on its own answers (SPEC 6.1).
- ``grpo``, ``rollouts``, ``policy_loss``, ``distributed``: GRPO for the step policy (SPEC 6.2);
  ``policy_init``: a starting policy fitted to SPEC 2's default policy.
- ``code_data``, ``code_cases``, ``mdlm_loss``, ``mdlm``: a LLaDA-architecture masked diffusion LM
  trained on the Python standard library (SPEC 5 and 7), its data, objective and infilling cases.

Each command module (``align``, ``grpo``, ``mdlm``) runs as ``mdfast train <name>`` or
``python -m mdfast.train.<name>``.
"""
