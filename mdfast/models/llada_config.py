"""The LLaDA ``config.json`` (SPEC 5): ``LLaDAConfig`` and the checkpoint keys and shapes it implies.

- ``LLaDAConfig``: the ``config.json`` fields SPEC 5 uses (``from_dict`` / ``from_json_file``);
- ``checkpoint_shapes``: the state-dict keys and shapes SPEC 5 lists; ``LLaDAModel.state_dict()``
  has exactly these keys, so checkpoints load by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["LLaDAConfig", "checkpoint_shapes"]

# config.json switches of the remote code that SPEC 5 fixes: where present they must hold one of
# these values, or the checkpoint is not the architecture implemented here.
_FIXED_SWITCHES: dict[str, tuple[Any, ...]] = {
    "model_type": ("llada",),
    "block_type": ("llama",),
    "activation_type": ("silu",),
    "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
    "include_qkv_bias": (False,),
    "attention_layer_norm": (False,),
    "clip_qkv": (None,),
    "alibi": (False,),
    "rope": (True,),
    "rope_full_precision": (True,),
    "multi_query_attention": (False, None),
    "block_group_size": (1,),
}


@dataclass(frozen=True)
class LLaDAConfig:
    """The LLaDA ``config.json`` fields SPEC 5 uses.

    Every field is required except ``n_kv_heads`` (default ``n_heads``) and ``embedding_size``
    (default ``vocab_size``); other keys are ignored.

    SPEC 5: "include_bias false, ... input_emb_norm false": both must be false here.
    ``max_sequence_length`` is not enforced by the forward (the remote code does not enforce it
    either); ``mdfast.generate`` and ``mdfast.infill`` refuse longer sequences up front.
    """

    model_type: ClassVar[str] = "llada"

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    rope_theta: float
    rms_norm_eps: float
    include_bias: bool
    weight_tying: bool
    scale_logits: bool
    input_emb_norm: bool
    max_sequence_length: int
    mask_token_id: int
    eos_token_id: int

    def __post_init__(self) -> None:
        if self.include_bias:
            raise ValueError("config.json: include_bias is true, but the LLaDA architecture of SPEC 5 has no biases")
        if self.input_emb_norm:
            raise ValueError("config.json: input_emb_norm is true, but SPEC 5 feeds the embeddings unscaled")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"config.json: d_model {self.d_model} must split into n_heads {self.n_heads} heads of even size (RoPE)"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"config.json: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        """hd = d_model / n_heads."""
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LLaDAConfig:
        """The config from a parsed ``config.json``; ValueError naming a missing key or bad value."""
        for key, allowed in _FIXED_SWITCHES.items():
            if key in values and values[key] not in allowed:
                raise ValueError(
                    f"config.json: {key} is {values[key]!r}; the LLaDA architecture of SPEC 5 needs {allowed[0]!r}"
                )
        values = dict(values)
        for key, default in (("n_kv_heads", "n_heads"), ("embedding_size", "vocab_size")):
            if values.get(key) is None and default in values:
                values[key] = values[default]
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name not in values:
                raise ValueError(f"config.json: missing required key {field.name!r}")
            kwargs[field.name] = _typed(field.name, values[field.name], field.type)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> LLaDAConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``model_type``: what ``save_llada`` writes as ``config.json``."""
        return {"model_type": self.model_type, **dataclasses.asdict(self)}


def _typed(name: str, value: Any, kind: str) -> int | float | bool:
    """``value`` as the field's type (``kind`` is its annotation: "int", "float" or "bool")."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"config.json: {name} must be {kind}, got {value!r}")


def checkpoint_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a LLaDA checkpoint with its shape (SPEC 5).

    State-dict keys (hd = d_model / n_heads, F = mlp_hidden_size):

        model.transformer.wte.weight (V, d); model.transformer.ln_f.weight (d);
        model.transformer.ff_out.weight (V, d) (absent when weight_tying: logits then use wte);
        per block i, prefix model.transformer.blocks.{i}.: attn_norm.weight (d), q_proj.weight (d, d),
        k_proj.weight (n_kv_heads*hd, d), v_proj.weight (n_kv_heads*hd, d), attn_out.weight (d, d),
        ff_norm.weight (d), ff_proj.weight (F, d), up_proj.weight (F, d), ff_out.weight (d, F).

    V is ``embedding_size``, the number of rows of wte and of the head.
    """
    d, V, F_, kv = config.d_model, config.embedding_size, config.mlp_hidden_size, config.n_kv_heads * config.head_dim
    shapes = {"model.transformer.wte.weight": (V, d), "model.transformer.ln_f.weight": (d,)}
    if not config.weight_tying:
        shapes["model.transformer.ff_out.weight"] = (V, d)
    block = {
        "attn_norm": (d,),
        "q_proj": (d, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "attn_out": (d, d),
        "ff_norm": (d,),
        "ff_proj": (F_, d),
        "up_proj": (F_, d),
        "ff_out": (d, F_),
    }
    for i in range(config.n_layers):
        shapes.update({f"model.transformer.blocks.{i}.{name}.weight": shape for name, shape in block.items()})
    return shapes
