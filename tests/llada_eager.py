"""An eager, unfused port of the LLaDA architecture (SPEC 5), in the way LLaDA's remote code
(``modeling_llada.py``) computes it.

A test double (here in ``tests/``, not installed) that serves twice:
- the baseline that ``bench/bench_e2e.py`` (which loads this file by its path) compares mdfast's
  native, fused body (``mdfast.models.llada``) against: the same SPEC, plainly ported, not tuned;
- the stand-in for LLaDA's remote-code model in the tests (no remote code is available offline):
  ``config.model_type == "llada"``, a ``transformers.PretrainedConfig`` with LLaDA's
  ``config.json`` fields, modules named so that ``state_dict()`` has exactly SPEC 5's keys, and a
  forward taking ``input_ids`` or ``inputs_embeds`` and ``attention_mask``, returning ``.logits``.

As in the remote code: separate q, k, v, ff_proj and up_proj matrix products; RMSNorm and RoPE in
plain torch ops with float32 math (SPEC 5: "y = x in float32 times rsqrt(mean(y^2 over d) + eps),
cast back to x's dtype, then multiplied by w"; "RoPE on q and k in float32"), the RoPE tables
computed once per forward; k and v heads ``repeat_interleave``-d to n_heads; attention through
``F.scaled_dot_product_attention``; the padding mask only when ``attention_mask`` has a 0 (a check
that waits for the device, as the remote code's ``0.0 in attention_mask`` does). No KV cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

__all__ = ["EagerLLaDA", "EagerLLaDAConfig"]


class EagerLLaDAConfig(PretrainedConfig):
    """LLaDA's ``config.json`` fields (SPEC 5); the defaults are LLaDA-8B-Instruct's. ``n_kv_heads``
    defaults to ``n_heads`` and ``embedding_size`` to ``vocab_size``."""

    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_layers: int = 32,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        mlp_hidden_size: int = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = None,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        weight_tying: bool = False,
        scale_logits: bool = False,
        input_emb_norm: bool = False,
        max_sequence_length: int = 4096,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        **kwargs,
    ) -> None:
        if include_bias or input_emb_norm:
            raise ValueError("include_bias, input_emb_norm: this port implements SPEC 5, where both are false")
        self.d_model, self.n_layers, self.n_heads = d_model, n_layers, n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.mlp_hidden_size, self.vocab_size = mlp_hidden_size, vocab_size
        self.embedding_size = vocab_size if embedding_size is None else embedding_size
        self.rope_theta, self.rms_norm_eps = rope_theta, rms_norm_eps
        self.include_bias, self.input_emb_norm = include_bias, input_emb_norm
        self.weight_tying, self.scale_logits = weight_tying, scale_logits
        self.max_sequence_length, self.mask_token_id = max_sequence_length, mask_token_id
        super().__init__(eos_token_id=eos_token_id, **kwargs)


class RMSLayerNorm(nn.Module):
    """SPEC 5: "y = x in float32 times rsqrt(mean(y^2 over d) + eps), cast back to x's dtype, then
    multiplied by w"."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        og_dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(og_dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """(sin, cos), each (seq_len, hd) in float32. SPEC 5: "positions 0..L-1: inv_freq_j =
    theta^(-2j/hd) for j < hd/2, angles a = pos * inv_freq repeated twice (cat(a, a))"."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float), inv_freq)
    positions = torch.cat((freqs, freqs), dim=-1)
    return positions.sin(), positions.cos()


def apply_rotary(t: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """SPEC 5: "rot(u) = cat(-u[hd/2:], u[:hd/2]), u' = u cos + rot(u) sin", in float32, cast back."""
    t_ = t.float()
    x1, x2 = t_.chunk(2, dim=-1)
    return (t_ * cos + torch.cat((-x2, x1), dim=-1) * sin).to(t.dtype)


class EagerLLaDABlock(nn.Module):
    """SPEC 5's block, as the remote code's ``LLaDALlamaBlock`` computes it."""

    def __init__(self, config: EagerLLaDAConfig) -> None:
        super().__init__()
        d, F_ = config.d_model, config.mlp_hidden_size
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, d // config.n_heads
        self.attn_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * self.head_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, F_, bias=False)
        self.up_proj = nn.Linear(d, F_, bias=False)
        self.ff_out = nn.Linear(F_, d, bias=False)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, sin: Tensor, cos: Tensor) -> Tensor:
        B, T, C = q.shape
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        return self.attn_out(att.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x: Tensor, bias: Tensor | None, sin: Tensor, cos: Tensor) -> Tensor:
        x_normed = self.attn_norm(x)
        x = x + self.attention(self.q_proj(x_normed), self.k_proj(x_normed), self.v_proj(x_normed), bias, sin, cos)
        og_x = x
        x = self.ff_norm(x)
        x = F.silu(self.ff_proj(x)) * self.up_proj(x)
        return og_x + self.ff_out(x)


class EagerLLaDA(nn.Module):
    """The LLaDA masked diffusion LM (the remote code's ``LLaDAModelLM``): ``model.transformer`` holds
    ``wte``, ``blocks``, ``ln_f`` and, without weight tying, ``ff_out``. Weights are torch's default
    initialisation; build under ``torch.device(...)`` and cast with ``.to(dtype)``."""

    def __init__(self, config: EagerLLaDAConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.embedding_size, d),
                "blocks": nn.ModuleList(EagerLLaDABlock(config) for _ in range(config.n_layers)),
                "ln_f": RMSLayerNorm(d, config.rms_norm_eps),
            }
        )
        if not config.weight_tying:
            transformer["ff_out"] = nn.Linear(d, config.embedding_size, bias=False)
        self.model = nn.Module()
        self.model.transformer = transformer

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def get_output_embeddings(self) -> nn.Linear | None:
        """The head ``ff_out``; None with weight tying (the logits then use wte's weight)."""
        return self.model.transformer["ff_out"] if "ff_out" in self.model.transformer else None  # noqa: SIM401

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, L, embedding_size) for ``input_ids`` (B, L) or ``inputs_embeds`` (B, L, d);
        ``attention_mask`` (B, L) is 1 for tokens, 0 for padding. Other keyword arguments are ignored."""
        if use_cache:
            raise ValueError("use_cache: this port has no KV cache; pass use_cache=False")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, d)")
        transformer = self.model.transformer
        x = transformer["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        bias = None
        if attention_mask is not None and 0 in attention_mask:
            # SPEC 5: "an additive mask (1 - mask) * float32.min over keys, shape (B, 1, 1, L)", in
            # the model dtype with -inf replaced by its most negative finite value
            mask = attention_mask.to(torch.float)[:, None, None, :]
            bias = ((1.0 - mask) * torch.finfo(mask.dtype).min).to(x.dtype)
            bias.masked_fill_(bias == float("-inf"), torch.finfo(bias.dtype).min)
        sin, cos = rotary_tables(
            x.shape[1], self.config.d_model // self.config.n_heads, self.config.rope_theta, x.device
        )
        for block in transformer["blocks"]:
            x = block(x, bias, sin, cos)
        x = transformer["ln_f"](x)
        head = self.get_output_embeddings()
        logits = F.linear(x, transformer["wte"].weight) if head is None else head(x)
        if self.config.scale_logits:
            logits = logits * (1.0 / math.sqrt(self.config.d_model))
        return CausalLMOutputWithPast(logits=logits)
