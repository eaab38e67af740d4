"""SPEC 5, RoPE applied in place to q or k (B, L, H, hd), in float32: one program per (b, l).

    angles a = pos * inv_freq (inv_freq_j = theta^(-2j/hd), j < hd/2), repeated twice: cat(a, a);
    rot(u) = cat(-u[hd/2:], u[:hd/2]);  u' = u cos + rot(u) sin, cast back to u's dtype.

inv_freq comes from ``mdfast.reference.rope_inv_freq`` (computed once by torch), so the angles are
the same float32 products as the eager evaluation.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

__all__ = ["rope_"]


@triton.jit
def _rope_kernel(x_ptr, inv_freq_ptr, L, H, stride_b, stride_l, stride_h, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) // L
    pos = tl.program_id(0).to(tl.int64) % L
    heads = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, HALF)[None, :]
    live = heads < H
    angle = pos.to(tl.float32) * tl.load(inv_freq_ptr + j)
    cos, sin = tl.cos(angle), tl.sin(angle)
    base = x_ptr + b * stride_b + pos * stride_l + heads * stride_h
    lo = tl.load(base + j, mask=live, other=0.0)
    hi = tl.load(base + HALF + j, mask=live, other=0.0)
    u_lo, u_hi = lo.to(tl.float32), hi.to(tl.float32)
    # first half: u_lo cos - u_hi sin; second half: u_hi cos + u_lo sin
    tl.store(base + j, (u_lo * cos - u_hi * sin).to(lo.dtype), mask=live)
    tl.store(base + HALF + j, (u_hi * cos + u_lo * sin).to(hi.dtype), mask=live)


def rope_(x: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotates x (B, L, H, hd), last dimension dense, in place; returns x."""
    B, L, H, hd = x.shape
    _rope_kernel[(B * L,)](
        x, inv_freq, L, H, x.stride(0), x.stride(1), x.stride(2), HALF=hd // 2, BLOCK_H=triton.next_power_of_2(H)
    )
    return x
