"""``python -m mdfast.harness [lm-eval arguments]``: lm-eval's own command line, with the ``mdfast`` model registered.

lm-eval finds a model by its registered name, and only an import registers one: this entry point imports
``mdfast.harness`` first, then hands the arguments to lm-eval's ``cli_evaluate``, e.g.
``python -m mdfast.harness --model mdfast --model_args pretrained=mdfast/data/code_model,steps=16,gen_length=32
--include_path mdfast/harness/tasks --tasks mdfast_code_choice --limit 4``.
"""

from lm_eval.__main__ import cli_evaluate

import mdfast.harness  # noqa: F401  (registers the model "mdfast")

if __name__ == "__main__":
    cli_evaluate()
