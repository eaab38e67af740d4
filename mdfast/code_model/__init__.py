"""The code model: a small LLaDA masked diffusion LM trained on the Python standard library (SPEC 7).

- ``data``: the standard library's training / held-out split and the code tokenizer.
- ``cases``: infilling cases cut from held-out functions, their training records and rewards.
- ``mdlm_loss``: the masked-diffusion objective (the module; its function is ``mdlm_loss.mdlm_loss``).
- ``options``, ``windows``, ``pretrain``: the training run (``mdfast train mdlm``); ``shipped``: where the
  shipped weights are (``mdfast/data/code_model``, with every binary asset of the package).

Public names load lazily from their module: ``from mdfast.code_model import load_tokenizer`` imports ``data`` only.
"""

from __future__ import annotations

from mdfast._lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    "EOS_ID": "data",
    "MASK_ID": "data",
    "PAD_ID": "data",
    "VOCAB_SIZE": "data",
    "encode_files": "data",
    "load_tokenizer": "data",
    "save_tokenizer": "data",
    "source_files": "data",
    "split_files": "data",
    "InfillCase": "cases",
    "code_infill_cases": "cases",
    "filled_file_parses": "cases",
    "span_token_accuracy": "cases",
    "training_record": "cases",
    "MaskedBatch": "mdlm_loss",
    "sample_masks": "mdlm_loss",
    "TrainOptions": "options",
    "HeldoutSet": "windows",
    "TokenWindows": "windows",
    "heldout_set": "windows",
    "token_streams": "windows",
    "code_model_config": "pretrain",
    "evaluate": "pretrain",
    "train": "pretrain",
    "SHIPPED_MODEL_DIR": "shipped",
}
_SUBMODULES = ("cases", "data", "mdlm_loss", "options", "pretrain", "shipped", "windows")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
