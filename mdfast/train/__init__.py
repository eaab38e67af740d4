"""Training code: the small code model of issue 13 (``code_data``, ``code_cases``, ``mdlm_loss``, ``mdlm``).

``python -m mdfast.train.mdlm --out DIR --minutes M`` (or ``mdfast train mdlm ...``) trains a LLaDA-architecture
masked diffusion LM (SPEC 5) on the Python standard library and saves a checkpoint ``mdfast.load_llada`` reads.
"""
