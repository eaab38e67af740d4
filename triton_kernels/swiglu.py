"""SPEC 5, the LLaDA MLP's gate: SiLU(ff_proj h) * up_proj h, elementwise, in Triton.

One program per (row, block of columns). gate and up are read through their own row strides with a
dense last dimension, so the two halves of one fused gate/up product (``gu[..., :F]``,
``gu[..., F:]``) are read in place; the output is a new contiguous tensor. Each product is rounded
to the inputs' dtype as eager torch rounds F.silu(gate) * up.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["swiglu"]


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n_cols, stride_gate, stride_up, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = cols < n_cols
    g = tl.load(gate_ptr + row * stride_gate + cols, mask=live, other=0.0)
    u = tl.load(up_ptr + row * stride_up + cols, mask=live, other=0.0)
    gf = g.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # SiLU(g) = g sigmoid(g), rounded like F.silu
    tl.store(out_ptr + row * n_cols + cols, (silu.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=live)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) * up, a new contiguous (rows, n) tensor.

    gate, up: (rows, n) with stride(1) == 1 and any row strides.
    """
    rows, n = gate.shape
    out = torch.empty(rows, n, dtype=gate.dtype, device=gate.device)
    if out.numel():
        BLOCK = min(1024, triton.next_power_of_2(n))
        _swiglu_kernel[(rows, triton.cdiv(n, BLOCK))](gate, up, out, n, gate.stride(0), up.stride(0), BLOCK=BLOCK)
    return out
