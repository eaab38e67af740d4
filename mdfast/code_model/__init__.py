"""The code model: a small LLaDA masked diffusion LM trained on the Python standard library (SPEC 7).

- ``data``: the standard library's training / held-out split and the code tokenizer.
- ``cases``: infilling cases cut from held-out functions, their training records and rewards.
- ``mdlm_loss``: the masked-diffusion objective.
- ``pretrain``: the training run (``mdfast train mdlm``) and ``SHIPPED_MODEL_DIR``.

The shipped weights stay in ``mdfast/data/code_model`` beside the example policies: every binary asset of the
package lives under ``mdfast/data`` (one package-data rule, no code beside it), and the eval benchmarks load it
from there without importing the training code.
"""
