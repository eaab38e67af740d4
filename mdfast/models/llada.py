"""A native LLaDA body (SPEC 5): loads LLaDA checkpoints without remote code and runs on mdfast.

SPEC 5 states the architecture; each formula below is quoted in the docstring of the one
function that computes it:

- ``LLaDAConfig``: the ``config.json`` fields SPEC 5 uses (``from_dict`` / ``from_json_file``).
- ``checkpoint_shapes``: the state-dict keys and shapes SPEC 5 lists; ``LLaDAModel.state_dict()``
  has exactly these keys, so checkpoints load by name.
- ``padding_bias``, ``LLaDABlock.forward``, ``LLaDAModel.forward``: the forward pass; RMSNorm
  (fused with the residual add), RoPE and SiLU(gate) * up go through ``mdfast.ops`` (Triton
  kernels on CUDA tensors, their references in ``mdfast/reference.py`` elsewhere).
- ``load_llada`` / ``save_llada``: sharded safetensors checkpoints (``model-0000k-of-0000n.safetensors``
  plus ``model.safetensors.index.json``, or one ``model.safetensors``), read by exact key names.
- ``from_remote``: a native body over the weights of another LLaDA implementation (LLaDA's remote
  code), sharing its tensors; ``mdfast.patch`` drives remote-code LLaDA models through it.

Fused projections: each block computes q, k, v with one matrix product (``qkv_proj``, weight
(d + 2 n_kv_heads hd, d) = cat(Wq, Wk, Wv) by rows) and gate, up with one (``gate_up_proj``,
weight (2F, d) = cat(W_ff_proj, W_up_proj)); q, k, v and gate, up are views of the fused outputs
(no copies: ``ops.rope_`` rotates the q and k views in place, ``ops.swiglu`` reads the two halves
in place). The state dict still has exactly the checkpoint's keys: a state-dict post-hook
(``_split_fused``) lists each fused weight as its checkpoint parts ``q_proj.weight``,
``k_proj.weight``, ``v_proj.weight`` (``ff_proj.weight``, ``up_proj.weight``), row views of the
fused weight (no copy), in SPEC 5's order; a load-state-dict pre-hook (``_fuse_parts``)
concatenates those parts into the fused weight (one copy), so ``load_state_dict`` (strict, and
with ``assign=True`` onto a meta-device model) takes checkpoint state dicts, and a missing or
misshapen part is reported under its checkpoint key.

Choices where SPEC 5 is silent (made to match LLaDA's remote code, ``modeling_llada.py``):
- grouped query: kv head g serves query heads g*r .. g*r + r - 1, r = n_heads / n_kv_heads
  (``repeat_interleave``);
- the padding mask is built in float32 and cast to the model dtype, where float32.min becomes
  -inf in bfloat16/float16; -inf is then replaced by that dtype's most negative finite value;
- inv_freq is computed in float32 as 1 / theta^(2j/hd);
- the logits have ``embedding_size`` columns (the head's rows), not cut to ``vocab_size``;
- no KV cache (``use_cache`` must be false) and no ``position_ids``: positions are 0..L-1.
"In float32" means float32 for bfloat16, float16 and float32 models; a float64 model computes in
float64 throughout (``reference.compute_dtype``), so tests can evaluate this code itself exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops

__all__ = [
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAOutput",
    "RMSNorm",
    "checkpoint_shapes",
    "from_remote",
    "load_llada",
    "padding_bias",
    "save_llada",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

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
    """The LLaDA ``config.json`` fields SPEC 5 uses. Every field is required except ``n_kv_heads``
    (default ``n_heads``) and ``embedding_size`` (default ``vocab_size``); other keys are ignored.

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
    """Every state-dict key of a LLaDA checkpoint with its shape (SPEC 5, hd = d_model / n_heads,
    F = mlp_hidden_size):

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


# ---------------------------------------------------------------------------------------------
# The forward pass
# ---------------------------------------------------------------------------------------------


def padding_bias(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The additive attention mask over keys, (B, 1, 1, L), in ``dtype``. SPEC 5: "if attention_mask
    has a 0, an additive mask (1 - mask) * float32.min over keys, shape (B, 1, 1, L); otherwise no
    mask at all". Cast to the model dtype, float32.min overflows to -inf in bfloat16/float16 and is
    replaced by that dtype's most negative finite value (as the remote code does).

    Built from any given mask without reading its values, so the forward never waits for the device
    (a CUDA graph can capture it): a mask without zeros gives an all-zero bias, the same attention
    as no mask up to rounding. Callers pass ``attention_mask=None`` when there is no padding (as
    mdfast's decoding loop does); only then does attention run without a mask."""
    if attention_mask is None:
        return None
    mask = attention_mask.to(torch.float32)[:, None, None, :]
    bias = (1.0 - mask) * torch.finfo(torch.float32).min
    return bias.to(dtype).clamp_min(torch.finfo(dtype).min)


class RMSNorm(nn.Module):
    """RMSNorm with a weight of size d and no bias (``mdfast.ops.rms_norm``, SPEC 5: "y = x in
    float32 times rsqrt(mean(y^2 over d) + eps), cast back to x's dtype, then multiplied by w")."""

    def __init__(
        self, size: int, eps: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class LLaDABlock(nn.Module):
    """One LLaDA transformer block (SPEC 5 "block") with fused projections: ``qkv_proj`` holds
    cat(Wq, Wk, Wv), ``gate_up_proj`` cat(W_ff_proj, W_up_proj) (rows); the other submodules are
    named as the checkpoint keys, and the state-dict hooks below translate the fused ones."""

    # fused module -> the checkpoint modules whose weights it stacks, in order
    FUSED: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("ff_proj", "up_proj"),
    }

    def __init__(
        self, config: LLaDAConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        d, F_, kv = config.d_model, config.mlp_hidden_size, config.n_kv_heads * config.head_dim
        factory = {"device": device, "dtype": dtype, "bias": False}
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.rope_theta = config.rope_theta
        # rows of each fused weight (and columns of its output) per checkpoint part
        self.split_sizes = {"qkv_proj": (d, kv, kv), "gate_up_proj": (F_, F_)}
        self.attn_norm = RMSNorm(d, config.rms_norm_eps, device=device, dtype=dtype)
        self.qkv_proj = nn.Linear(d, d + 2 * kv, **factory)
        self.attn_out = nn.Linear(d, d, **factory)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps, device=device, dtype=dtype)
        self.gate_up_proj = nn.Linear(d, 2 * F_, **factory)
        self.ff_out = nn.Linear(F_, d, **factory)
        self.register_state_dict_post_hook(_split_fused)
        self.register_load_state_dict_pre_hook(_fuse_parts)

    def _heads(self, y: Tensor, heads: int, rope: bool) -> Tensor:
        """(B, L, heads*hd) -> (B, heads, L, hd): "split into heads of size hd" (views of the fused
        output), with RoPE applied in place first (``mdfast.ops.rope_``: float32 math, positions
        0..L-1) when ``rope``."""
        y = y.unflatten(-1, (heads, self.head_dim))
        if rope:
            ops.rope_(y, self.rope_theta)
        return y.transpose(1, 2)

    def attention(self, h: Tensor, bias: Tensor | None) -> Tensor:
        """SPEC 5: "q, k, v = h Wq^T, h Wk^T, h Wv^T split into heads of size hd; RoPE on q and k in
        float32 ...; k, v heads repeated to n_heads (grouped query); attention is bidirectional (no
        causal mask), scale 1/sqrt(hd), plus the padding mask". Returns the merged heads (B, L, d),
        before attn_out. q, k, v are column slices of one product h cat(Wq, Wk, Wv)^T (slices, not
        ``split``: autograd lets RoPE rotate those in place). kv head g serves query heads
        g*r .. g*r + r - 1 (``repeat_interleave``)."""
        B, L, d = h.shape
        qkv, kv = self.qkv_proj(h), self.n_kv_heads * self.head_dim
        q = self._heads(qkv[..., :d], self.n_heads, rope=True)
        k = self._heads(qkv[..., d : d + kv], self.n_kv_heads, rope=True)
        v = self._heads(qkv[..., d + kv :], self.n_kv_heads, rope=False)
        repeats = self.n_heads // self.n_kv_heads
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, is_causal=False, scale=1.0 / math.sqrt(self.head_dim)
        )
        return out.transpose(1, 2).reshape(B, L, d)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """SPEC 5: "h = RMSNorm(x; attn_norm); ... x = x + attn_out(merged heads);
        h = RMSNorm(x; ff_norm); x = x + ff_out(SiLU(ff_proj h) * up_proj h)", the residual add
        and the second RMSNorm fused (``ops.rms_norm(..., update=)``), SiLU(.) * . as ``ops.swiglu``
        on the two halves of one product h cat(W_ff_proj, W_up_proj)^T."""
        x, h = ops.rms_norm(
            x, self.ff_norm.weight, self.ff_norm.eps, update=self.attn_out(self.attention(self.attn_norm(x), bias))
        )
        gate, up = self.gate_up_proj(h).split(self.split_sizes["gate_up_proj"], dim=-1)
        return x + self.ff_out(ops.swiglu(gate, up))


def _split_fused(block: LLaDABlock, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook of LLaDABlock: each fused weight replaced by its checkpoint parts, row
    views of it (no copy); the block's keys re-inserted in order, so they follow SPEC 5's order."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        value = state_dict.pop(key)
        name = key[len(prefix) :].removesuffix(".weight")
        if name in block.FUSED:
            parts = value.split(block.split_sizes[name])
            state_dict.update({f"{prefix}{part}.weight": view for part, view in zip(block.FUSED[name], parts)})
        else:
            state_dict[key] = value


def _fuse_parts(
    block: LLaDABlock,
    state_dict: dict[str, Tensor],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook of LLaDABlock: the checkpoint parts of each fused weight (popped
    from the block's state dict) concatenated into it. A fused weight loads from all of its parts
    or keeps its value: absent parts are reported as missing keys and misshapen ones as size
    mismatches, under their checkpoint keys."""
    for name, part_names in block.FUSED.items():
        linear = getattr(block, name)
        parts = []
        for part, rows in zip(part_names, block.split_sizes[name]):
            key, shape = f"{prefix}{part}.weight", torch.Size((rows, linear.in_features))
            tensor = state_dict.pop(key, None)
            if tensor is None:
                missing_keys.append(key)
            elif tensor.shape != shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tensor.shape} from checkpoint, "
                    f"the shape in current model is {shape}."
                )
            else:
                parts.append(tensor)
        state_dict[f"{prefix}{name}.weight"] = torch.cat(parts) if len(parts) == len(part_names) else linear.weight


@dataclass
class LLaDAOutput:
    """logits (B, L, V) (only the rows mdfast's RowSelectingHead selects, while it is set)."""

    logits: Tensor


class LLaDAModel(nn.Module):
    """The LLaDA masked diffusion LM of SPEC 5, natively: ``state_dict()`` keys are exactly the
    checkpoint's (``checkpoint_shapes``), ``forward`` takes what the remote code's takes, and
    ``mdfast.patch`` / ``mdfast.generate`` drive it (``config.model_type == "llada"``).

    Modules: ``model.transformer`` is a ModuleDict with ``wte`` (nn.Embedding), ``blocks``
    (LLaDABlock list), ``ln_f`` (RMSNorm) and, without weight tying, ``ff_out`` (the head, an
    nn.Linear applied last, which mdfast swaps for its row-selecting head). Weights are randomly
    initialised (by torch's module defaults); ``load_llada`` builds one on the meta device and
    assigns the checkpoint's tensors.
    """

    def __init__(
        self, config: LLaDAConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.config = config
        d, V = config.d_model, config.embedding_size
        transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(V, d, device=device, dtype=dtype),
                "blocks": nn.ModuleList(LLaDABlock(config, device=device, dtype=dtype) for _ in range(config.n_layers)),
                "ln_f": RMSNorm(d, config.rms_norm_eps, device=device, dtype=dtype),
            }
        )
        if not config.weight_tying:
            transformer["ff_out"] = nn.Linear(d, V, bias=False, device=device, dtype=dtype)
        self.model = nn.Module()
        self.model.transformer = transformer

    @property
    def transformer(self) -> nn.ModuleDict:
        return self.model.transformer

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer["wte"]

    def get_output_embeddings(self) -> nn.Module | None:
        """The head ``ff_out`` (nn.Linear, or mdfast's RowSelectingHead while patched); None with
        weight tying, where the logits use wte's weight directly."""
        return self.transformer["ff_out"] if "ff_out" in self.transformer else None  # noqa: SIM401 - a ModuleDict has no get

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = False,
        **ignored: Any,
    ) -> LLaDAOutput:
        """Logits (B, L, V) for ``input_ids`` (B, L) or ``inputs_embeds`` (B, L, d) (exactly one).

        SPEC 5: "x = wte[input_ids], or the given inputs_embeds unchanged; no positional
        embedding"; the blocks; "logits = RMSNorm(x; ln_f) ff_out^T (times 1/sqrt(d) if
        scale_logits)", wte in place of ff_out with weight tying. ``attention_mask`` (B, L), 1 for
        tokens and 0 for padding (see ``padding_bias``). Other keyword arguments (e.g.
        ``output_hidden_states``, ``return_dict``) are accepted and ignored, except ``position_ids``
        (refused: positions are always 0..L-1) and ``use_cache=True`` (there is no KV cache).
        """
        if use_cache:
            raise ValueError("use_cache: the native LLaDA body has no KV cache; pass use_cache=False")
        if ignored.get("position_ids") is not None:
            raise ValueError("position_ids: LLaDA takes none (positions are 0..L-1; left padding is masked)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, d)")
        x = self.transformer["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        bias = padding_bias(attention_mask, x.dtype)
        for block in self.transformer["blocks"]:
            x = block(x, bias)
        x = self.transformer["ln_f"](x)
        head = self.get_output_embeddings()
        logits = F.linear(x, self.transformer["wte"].weight) if head is None else head(x)
        if self.config.scale_logits:
            logits = logits * (1.0 / math.sqrt(self.config.d_model))
        return LLaDAOutput(logits)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def load_llada(
    path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> LLaDAModel:
    """The LLaDA model in folder ``path`` (``config.json`` plus ``model.safetensors.index.json``
    and its shards, or one ``model.safetensors``), its weights in ``dtype`` on ``device``, in eval
    mode. Nothing is downloaded and no remote code runs. Every checkpoint key must be one of
    ``checkpoint_shapes(config)`` with that shape and every one of those must be present, or a
    ValueError lists the missing, unexpected and misshapen keys. The module is built on the meta
    device and the tensors are read straight onto ``device``, one block at a time (one copy, plus
    one block's projections while they are fused)."""
    from safetensors import safe_open

    folder = Path(path)
    config = LLaDAConfig.from_json_file(folder / CONFIG_FILE)
    located = _locate_keys(folder, checkpoint_shapes(config))
    device = str(torch.device(device))
    model = LLaDAModel(config, device="meta")
    with ExitStack() as stack:
        files = {
            file: stack.enter_context(safe_open(str(file), framework="pt", device=device))
            for file in set(located.values())
        }
        _assign_by_block(model, lambda key: files[located[key]].get_tensor(key).to(dtype))
    return model.eval()


def _assign_by_block(
    model: LLaDAModel, take: Callable[[str], Tensor], loaded: Callable[[str, LLaDABlock], None] | None = None
) -> None:
    """Give the meta-device ``model`` the tensor ``take(key)`` of every checkpoint key
    (``load_state_dict(..., assign=True)``), one block at a time: fusing a block's projections
    copies them, and their parts are dropped before the next block is read, so no more than one
    block's projections exist twice. ``loaded(prefix, block)`` is called after each block."""
    keys = checkpoint_shapes(model.config)
    for i, block in enumerate(model.transformer["blocks"]):
        prefix = f"model.transformer.blocks.{i}."
        block.load_state_dict(
            {key.removeprefix(prefix): take(key) for key in keys if key.startswith(prefix)}, assign=True
        )
        if loaded is not None:
            loaded(prefix, block)
    for key in keys:
        if not key.startswith("model.transformer.blocks."):  # wte, ln_f, ff_out
            module, name = key.rsplit(".", 1)
            model.get_submodule(module).load_state_dict({name: take(key)}, assign=True)


def _checkpoint_files(folder: Path) -> tuple[list[Path], set[str] | None]:
    """The safetensors files of the checkpoint in ``folder`` and the keys its index lists: the
    shards ``model.safetensors.index.json`` names, or the single ``model.safetensors`` (no index)."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [str(file) for file in files if not file.is_file()]
        if absent:
            raise ValueError(f"{index}: names shards that do not exist: {absent}")
        return files, set(weight_map)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE], None
    raise ValueError(f"{folder}: no checkpoint found (expected {INDEX_FILE} with its shards, or {SINGLE_FILE})")


def _locate_keys(folder: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Path]:
    """Key -> file for the checkpoint in ``folder``, after checking (from the headers only) that its
    keys and shapes are exactly ``expected``; ValueError listing every difference otherwise."""
    from safetensors import safe_open

    located: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    problems = []
    files, indexed = _checkpoint_files(folder)
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                if key in located:
                    problems.append(f"key {key} is in both {located[key].name} and {file.name}")
                located[key], shapes[key] = file, tuple(f.get_slice(key).get_shape())
    if indexed is not None and indexed != shapes.keys():
        problems.append(f"{INDEX_FILE} and its shards disagree on keys: {sorted(indexed ^ shapes.keys())}")
    problems += _key_problems(shapes, expected)
    if problems:
        raise ValueError(
            f"{folder}: the checkpoint does not match its config.json (SPEC 5 keys):\n  " + "\n  ".join(problems)
        )
    return located


def _key_problems(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """How a state dict's ``shapes`` (key -> shape) differ from ``expected``: the missing, the
    unexpected and the misshapen keys (empty when they match)."""
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    problems = [f"missing keys: {missing}"] if missing else []
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    misshapen = [key for key, shape in expected.items() if key in shapes and shapes[key] != shape]
    return problems + [f"{key}: shape {shapes[key]}, expected {expected[key]}" for key in misshapen]


def save_llada(model: LLaDAModel, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model`` to folder ``path`` as ``load_llada`` reads it: ``config.json``, shards
    ``model-0000k-of-0000n.safetensors`` of at most ``max_shard_bytes`` each (a larger tensor gets
    a shard of its own) and ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if shapes != checkpoint_shapes(model.config):
        raise ValueError("save_llada: the model's state dict is not the SPEC 5 key set (is it still mdfast.patch-ed?)")
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))


def from_remote(remote: nn.Module) -> LLaDAModel:
    """A native LLaDAModel over the weights of ``remote``, a LLaDA model of another implementation
    (LLaDA's remote code, ``modeling_llada.py``) whose state dict has the checkpoint keys: built on
    the meta device from ``remote.config`` and given ``remote``'s tensors (``assign=True``).

    The fused projections concatenate q, k, v (ff_proj, up_proj) into one new tensor each, so
    ``remote``'s own q_proj ... up_proj parameters are then re-pointed at row views of those
    (``assign=True`` again), block by block: one copy of the weights remains, shared by both
    modules (at most one block's projections exist twice meanwhile), and ``remote``'s forward
    computes what it did. Parameters of ``remote`` held elsewhere (an optimizer) are no longer its
    parameters afterwards. ValueError, before anything changes, when
    ``remote.config`` is not SPEC 5's (``LLaDAConfig.from_dict``) or its state dict is not
    exactly ``checkpoint_shapes(config)``.
    """
    config = LLaDAConfig.from_dict(remote.config.to_dict())
    state = remote.state_dict()
    problems = _key_problems({key: tuple(value.shape) for key, value in state.items()}, checkpoint_shapes(config))
    if problems:
        raise ValueError(
            f"{type(remote).__name__}: the state dict is not a LLaDA checkpoint's (SPEC 5 keys):\n  "
            + "\n  ".join(problems)
        )
    native = LLaDAModel(config, device="meta")

    def repoint(prefix: str, block: LLaDABlock) -> None:
        remote.get_submodule(prefix[:-1]).load_state_dict(block.state_dict(), assign=True)

    # popped, so that remote's separate q, k, v ... tensors are freed once it is re-pointed
    _assign_by_block(native, state.pop, repoint)
    return native.eval()
