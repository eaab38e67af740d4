"""SPEC 5, the LLaDA MLP's gate: SiLU(ff_proj h) * up_proj h, elementwise, in Triton.

Each product is rounded to the inputs' dtype as eager torch rounds F.silu(gate) * up.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["swiglu"]


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offsets < n
    g = tl.load(gate_ptr + offsets, mask=live, other=0.0)
    u = tl.load(up_ptr + offsets, mask=live, other=0.0)
    gf = g.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # SiLU(g) = g sigmoid(g), rounded like F.silu
    tl.store(out_ptr + offsets, (silu.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=live)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    out = torch.empty_like(gate)
    n = gate.numel()
    BLOCK = 1024
    _swiglu_kernel[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK)
    return out
