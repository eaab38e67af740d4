"""A native LLaDA (SPEC 5): loads LLaDA checkpoints without remote code and runs on mdfast.

The pieces, one module each, all importable from here:
- ``mdfast/models/llada_config.py``: ``LLaDAConfig`` (the ``config.json`` fields SPEC 5 uses) and
  ``checkpoint_shapes`` (the state-dict keys and shapes SPEC 5 lists);
- ``mdfast/models/llada_body.py``: ``LLaDAModel``, ``LLaDABlock``, ``RMSNorm``, ``padding_bias``:
  the forward pass, each formula quoted in the docstring of the one function that computes it;
- ``mdfast/models/llada_checkpoint.py``: ``load_llada``, ``save_llada`` (sharded safetensors, read
  by exact key names) and ``from_remote`` (a native body over a remote-code model's weights);
- ``mdfast/models/llada_cache.py``: ``KVCache``, ``allocate_cache`` (SPEC 8's K and V cache; the body's
  refresh forward writes it, ``LLaDAModel.forward_cached`` computes only the positions S).
"""

from __future__ import annotations

from .llada_body import LLaDABlock, LLaDAModel, LLaDAOutput, RMSNorm, padding_bias
from .llada_cache import KVCache, allocate_cache
from .llada_checkpoint import from_remote, load_llada, save_llada
from .llada_config import LLaDAConfig, checkpoint_shapes

__all__ = [
    "KVCache",
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAOutput",
    "RMSNorm",
    "allocate_cache",
    "checkpoint_shapes",
    "from_remote",
    "load_llada",
    "padding_bias",
    "save_llada",
]
