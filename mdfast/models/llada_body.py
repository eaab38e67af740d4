"""The native LLaDA body (SPEC 5): ``LLaDAModel``, its blocks and the forward pass.

SPEC 5 states the architecture; each formula is quoted in the docstring of the one function that
computes it (``padding_bias``, ``LLaDABlock.attention`` and ``forward``, ``LLaDAModel.forward``).
RMSNorm (fused with the residual add), RoPE and SiLU(gate) * up go through ``mdfast.ops`` (Triton
kernels on CUDA tensors, their references in ``mdfast/reference.py`` elsewhere).

Fused projections: each block holds q, k, v as one weight (``qkv_proj``, (d + 2 n_kv_heads hd, d)
= cat(Wq, Wk, Wv) by rows) and gate, up as one (``gate_up_proj``, (2F, d) = cat(W_ff_proj,
W_up_proj)); on CUDA one matrix product each, q, k, v and gate, up views of its output (no copies:
``ops.rope_`` rotates q and k in place, ``ops.swiglu`` reads the halves in place); on the CPU one
product per part on row views of the weight (dense outputs read faster there). The state dict
still has exactly the checkpoint's keys: a state-dict post-hook
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
- no ``position_ids``: positions are 0..L-1; ``use_cache`` (the remote code's) must be false.

The approximate KV cache of SPEC 8 (``mdfast/models/llada_cache.py``), opt-in: ``allocate_cache``
gives a ``KVCache`` (per layer K, V after RoPE, (B, L, n_kv_heads, hd)); ``forward(..., cache=)``
is the refresh (today's forward, which also writes every layer's K, V); ``forward_cached`` runs
only the positions S, each layer writing S's K, V into the cache and attending over all L of them.
"In float32" means float32 for bfloat16, float16 and float32 models; a float64 model computes in
float64 throughout (``reference.compute_dtype``), so tests can evaluate this code itself exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..errors import describe
from ..reference import compute_dtype, rope_tables
from .llada_cache import KVCache, allocate_cache, check_cache_rows, check_positions, rope_at_
from .llada_config import LLaDAConfig

__all__ = ["LLaDABlock", "LLaDAModel", "LLaDAOutput", "RMSNorm", "padding_bias"]


def padding_bias(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The additive attention mask over keys, (B, 1, 1, L), in ``dtype``: (1 - mask) * float32.min.

    SPEC 5: "if attention_mask has a 0, an additive mask (1 - mask) * float32.min over keys, shape
    (B, 1, 1, L); otherwise no mask at all". Cast to the model dtype, float32.min overflows to -inf
    in bfloat16/float16 and is replaced by that dtype's most negative finite value (as the remote
    code does).

    Built from any given mask without reading its values, so the forward never waits for the device
    (a CUDA graph can capture it): a mask without zeros gives an all-zero bias, the same attention
    as no mask up to rounding. Callers pass ``attention_mask=None`` when there is no padding (as
    mdfast's decoding loop does); only then does attention run without a mask.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.to(torch.float32)[:, None, None, :]
    bias = (1.0 - mask) * torch.finfo(torch.float32).min
    return bias.to(dtype).clamp_min(torch.finfo(dtype).min)


class RMSNorm(nn.Module):
    """RMSNorm with a weight of size d and no bias (``mdfast.ops.rms_norm``).

    SPEC 5: "RMSNorm(x; w): y = x in float32 times rsqrt(mean(y^2 over d) + eps), cast back to x's dtype, then
    multiplied by w".
    """

    def __init__(
        self, size: int, eps: float, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class LLaDABlock(nn.Module):
    """One LLaDA transformer block (SPEC 5 "block") with fused projections.

    ``qkv_proj`` holds cat(Wq, Wk, Wv), ``gate_up_proj`` cat(W_ff_proj, W_up_proj) (rows); the other
    submodules are named as the checkpoint keys, and the state-dict hooks below translate the fused ones.
    """

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

    def _heads(
        self,
        y: Tensor,
        heads: int,
        rope: bool,
        positions: Tensor | None = None,
        tables: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """(B, L, heads*hd) -> (B, heads, L, hd): "split into heads of size hd" (views of the fused output).

        With ``rope``, RoPE is applied in place first (``mdfast.ops.rope_``: float32 math, positions
        0..L-1; at ``positions`` (B, L) instead where given, ``llada_cache.rope_at_``), from the
        forward's shared ``tables`` (cos, sin) where given.
        """
        y = y.unflatten(-1, (heads, self.head_dim))
        if rope and positions is None:
            ops.rope_(y, self.rope_theta, tables=tables)
        elif rope:
            rope_at_(y, positions, self.rope_theta, tables)
        return y.transpose(1, 2)

    def attention(
        self,
        h: Tensor,
        bias: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        rows: Tensor | None = None,
        write: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The attention of a block: the merged heads (B, L, d), before attn_out.

        SPEC 5: "q, k, v = h Wq^T, h Wk^T, h Wv^T split into heads of size hd;
        RoPE on q and k in float32 ...; k, v heads repeated to n_heads (grouped query); attention is
        bidirectional (no causal mask), scale 1/sqrt(hd), plus the padding mask". q, k, v come from
        the fused weight cat(Wq, Wk, Wv) (``_fused``). kv head g serves query heads g*r .. g*r + r - 1
        (``repeat_interleave``).

        With the layer's cache ``kv`` (K, V views (B, L_all, n_kv_heads, hd), SPEC 8): without
        ``positions`` (the refresh) K, V are also copied into it and the attention is the same as
        without; with ``positions`` (B, L) (a cached step, h holding those positions' rows only) q, k
        are rotated at those positions, k, v replace the cache's rows there, and q attends over all
        L_all cached keys (``bias`` is then the padding mask over those): one op,
        ``torch.ops.mdfast.cached_attention``. ``rows`` (a refresh of some
        of the cache's rows): int64 (B,), the cache rows this batch's rows write. ``write`` (a cached
        step): (B, L) bool, the rows whose k, v replace the cache's (elsewhere they only query).
        ``rope``: RoPE's (cos, sin_rot) tables at these rows' positions (``reference.rope_tables``), built
        once per forward for every layer (None: each RoPE call builds its own).
        """
        B, L, d = h.shape
        q, k, v = self._fused("qkv_proj", h)
        q = self._heads(q, self.n_heads, True, positions, rope)
        k = self._heads(k, self.n_kv_heads, True, positions, rope)
        v = self._heads(v, self.n_kv_heads, False)
        if kv is not None and positions is not None:  # one op: write S's k, v into the cache, attend over it
            return torch.ops.mdfast.cached_attention.default(q, k, v, *kv, positions, write, bias)
        if kv is not None:
            k, v = _write_cache(kv, k, v, rows)
        repeats = self.n_heads // self.n_kv_heads
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, is_causal=False, scale=1.0 / math.sqrt(self.head_dim)
        )
        return out.transpose(1, 2).reshape(B, L, d)

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        rows: Tensor | None = None,
        write: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The block: x + attention, then x + the feed-forward (SPEC 5 "block").

        SPEC 5: "h = RMSNorm(x; attn_norm); ...
        x = x + attn_out(merged heads); h = RMSNorm(x; ff_norm); x = x + ff_out(SiLU(ff_proj h) * up_proj h)",
        the residual add and the second RMSNorm fused (``ops.rms_norm(..., update=)``), SiLU(.) * . as
        ``ops.swiglu`` on the two halves of one product h cat(W_ff_proj, W_up_proj)^T. ``kv``,
        ``positions``, ``rows``, ``write``: the layer's KV cache and how to use it; ``rope``: the
        forward's RoPE tables (see ``attention``).
        """
        attended = self.attention(self.attn_norm(x), bias, kv, positions, rows, write, rope)
        x, h = ops.rms_norm(x, self.ff_norm.weight, self.ff_norm.eps, update=self.attn_out(attended))
        gate, up = self._fused("gate_up_proj", h)
        return x + self.ff_out(ops.swiglu(gate, up))

    def _fused(self, name: str, h: Tensor) -> list[Tensor]:
        """The outputs of the fused projection ``name`` on h, one per checkpoint part (q, k, v or gate, up).

        On CUDA one product and column slices of it (one launch; slices, not ``split``: autograd lets
        RoPE rotate them in place). Elsewhere one product per part on row views of the fused weight:
        dense outputs, which the CPU's RoPE, attention and SwiGLU read faster than strided slices
        (bench/bench_forward.py).
        """
        linear, sizes = getattr(self, name), self.split_sizes[name]
        if not h.is_cuda:
            return [F.linear(h, w) for w in linear.weight.split(sizes)]
        out, start, parts = linear(h), 0, []
        for size in sizes:
            parts.append(out[..., start : start + size])
            start += size
        return parts


def _write_cache(kv: tuple[Tensor, Tensor], k: Tensor, v: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """K, V (B, n_kv_heads, L, hd) copied into a layer's cache ``kv`` by a refresh; returns k, v themselves.

    Every row (into the cache rows ``rows`` where given); the attention is then the plain forward's, bit for
    bit. A cached step's write and attention are one op, ``torch.ops.mdfast.cached_attention``
    (``mdfast/custom_ops.py``).
    """
    keys, values = kv
    if rows is not None:
        keys.index_copy_(0, rows, k.transpose(1, 2))
        values.index_copy_(0, rows, v.transpose(1, 2))
    else:
        keys.copy_(k.transpose(1, 2))
        values.copy_(v.transpose(1, 2))
    return k, v


def _split_fused(block: LLaDABlock, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook of LLaDABlock: each fused weight replaced by its checkpoint parts.

    The parts are row views of it (no copy); the block's keys are re-inserted in order, so they follow
    SPEC 5's order.
    """
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
    """Load-state-dict pre-hook of LLaDABlock: the checkpoint parts of each fused weight concatenated into it.

    The parts are popped from the block's state dict. A fused weight loads from all of its parts
    or keeps its value: absent parts are reported as missing keys and misshapen ones as size
    mismatches, under their checkpoint keys.
    """
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
    """The LLaDA masked diffusion LM of SPEC 5, natively.

    ``state_dict()`` keys are exactly the checkpoint's (``checkpoint_shapes``), ``forward`` takes what
    the remote code's takes, and ``mdfast.patch`` / ``mdfast.generate`` drive it
    (``config.model_type == "llada"``).

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
        """The head ``ff_out`` (nn.Linear, or mdfast's RowSelectingHead while patched).

        None with weight tying, where the logits use wte's weight directly.
        """
        return self.transformer["ff_out"] if "ff_out" in self.transformer else None  # noqa: SIM401 - a ModuleDict has no get

    def allocate_cache(self, batch: int, length: int) -> KVCache:
        """A KV cache for ``batch`` rows of ``length`` positions (SPEC 8), in this model's dtype and device.

        2 * n_layers * batch * length * n_kv_heads * hd elements, allocated once (``llada_cache.allocate_cache``).
        """
        return allocate_cache(self, batch, length)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = False,
        cache: KVCache | None = None,
        cache_rows: Tensor | None = None,
        **ignored: Any,
    ) -> LLaDAOutput:
        """Logits (B, L, V) for ``input_ids`` (B, L) or ``inputs_embeds`` (B, L, d) (exactly one).

        SPEC 5: "x = wte[input_ids], or the given inputs_embeds unchanged; no positional
        embedding"; the blocks; "logits = RMSNorm(x; ln_f) ff_out^T (times 1/sqrt(d) if
        scale_logits)", wte in place of ff_out with weight tying. ``attention_mask`` (B, L), 1 for
        tokens and 0 for padding (see ``padding_bias``). Other keyword arguments (e.g.
        ``output_hidden_states``, ``return_dict``) are accepted and ignored, except ``position_ids``
        (refused: positions are always 0..L-1) and ``use_cache=True`` (the remote code's cache).

        ``cache`` (SPEC 8 "Refresh"): a ``KVCache`` of this batch and length (``allocate_cache(B,
        L)``), into which every layer's K and V of all L positions are written (after RoPE); the
        logits are the same as without it, bit for bit. None (the default): no cache. ``cache_rows``:
        int64 (B,), distinct, the rows of a larger cache that this batch refreshes (a per-row refresh;
        default: the cache has this batch's B rows, in order); the other rows are left as they are.
        """
        if use_cache:
            raise ValueError("use_cache: the remote code's KV cache is not supported; pass use_cache=False")
        if ignored.get("position_ids") is not None:
            raise ValueError("position_ids: LLaDA takes none (positions are 0..L-1; left padding is masked)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, d)")
        x = self.transformer["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        bias = padding_bias(attention_mask, x.dtype)
        # the Triton kernel of ops.rope_ (CUDA tensors) computes its angles itself
        rope = None if x.device.type == "cuda" else self._rope_tables(torch.arange(x.shape[1], device=x.device), x)
        if cache is None:
            for block in self.transformer["blocks"]:
                x = block(x, bias, rope=rope)
            return LLaDAOutput(self._logits(x))
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache (model.allocate_cache(B, L)), got {type(cache).__name__}")
        batch = x.shape[0] if cache_rows is None else cache.batch
        cache.check(self.config, batch, x.shape[1], x.dtype, x.device)
        if cache_rows is not None:
            check_cache_rows(cache_rows, cache, x.shape[0])
        for i, block in enumerate(self.transformer["blocks"]):
            x = block(x, bias, cache.layer(i), rows=cache_rows, rope=rope)
        cache.filled |= cache_rows is None
        return LLaDAOutput(self._logits(x))

    def forward_cached(
        self,
        cache: KVCache,
        positions: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        write: Tensor | None = None,
        check_range: bool = True,
    ) -> LLaDAOutput:
        """Logits (B, n, V) of the positions S = ``positions`` only, over a filled KV cache (SPEC 8 dual/prefix step).

        input_ids (B, n) or inputs_embeds (B, n, d) (exactly one): the inputs at S, row j of
        sequence b at position ``positions[b, j]`` (int64 (B, n), distinct per row, any order: S
        need not be contiguous). attention_mask (B, L): the padding mask of the refresh that filled
        ``cache`` (the cache does not keep it). Each layer computes q, k, v for S only, rotates q, k
        at S's positions, writes k, v into the cache at S (replacing) and lets S attend over all L
        cached keys with the padding mask; every position outside S keeps the K, V of the last
        refresh (or of the last step that wrote it), so with more than one layer the logits are
        those of a full forward only up to those stale K, V. The head projects S's rows (the rows
        of mdfast's RowSelectingHead, when set, index S's rows). ``write`` (B, n) bool: the entries of S
        whose K, V are written (default: all); an entry with False only queries, and the cache keeps
        the K, V it had there (a batch's spare entries, so a row's cache is that of its solo run).
        ``check_range``: refuse indices outside [0, L) or repeated in a row (one device
        synchronisation; off, nothing here reads a value, for CUDA graphs). Nothing is allocated in
        the cache; it is written in place.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, n) and inputs_embeds (B, n, d)")
        x = self.transformer["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache (model.allocate_cache(B, L)), got {type(cache).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"inputs_embeds: expected (B, n, d = {self.config.d_model}), got {tuple(x.shape)}")
        cache.check(self.config, x.shape[0], cache.length, x.dtype, x.device)
        if not cache.filled:
            raise ValueError("cache: no refresh has filled it yet; run forward(..., cache=cache) over all L positions")
        check_positions(positions, cache, x.shape[1], check_range)
        if attention_mask is not None and tuple(attention_mask.shape) != (cache.batch, cache.length):
            raise ValueError(
                f"attention_mask: expected shape (B, L) = {(cache.batch, cache.length)} (every cached position), "
                f"got {tuple(attention_mask.shape)}"
            )
        if write is not None and (write.dtype != torch.bool or write.shape != positions.shape):
            raise ValueError(
                f"write: expected a bool tensor of positions' shape {tuple(positions.shape)}, got {describe(write)}"
            )
        bias = padding_bias(attention_mask, x.dtype)
        rope = self._rope_tables(positions, x)
        for i, block in enumerate(self.transformer["blocks"]):
            x = block(x, bias, cache.layer(i), positions, write=write, rope=rope)
        return LLaDAOutput(self._logits(x))

    def _rope_tables(self, positions: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE's (cos, sin_rot) at ``positions`` for hidden states x, built once and shared by every layer's q and k.

        ``reference.rope_tables`` in x's compute dtype: the tables each RoPE call would build itself
        (so the same bits); (L, 1, hd) for positions 0..L-1, (B, n, 1, hd) for a cached step's (B, n).
        """
        return rope_tables(positions, self.config.head_dim, self.config.rope_theta, compute_dtype(x))

    def _logits(self, x: Tensor) -> Tensor:
        """SPEC 5's last line on the final hidden states x: RMSNorm(x; ln_f), the head, 1/sqrt(d) if scale_logits."""
        x = self.transformer["ln_f"](x)
        head = self.get_output_embeddings()
        logits = F.linear(x, self.transformer["wte"].weight) if head is None else head(x)
        if self.config.scale_logits:
            logits = logits * (1.0 / math.sqrt(self.config.d_model))
        return logits
