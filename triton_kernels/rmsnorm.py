"""SPEC 5, RMSNorm fused with the residual add, in Triton: one program per row of width d.

x = residual + update                      (rounded to the model dtype, as eager torch adds)
RMSNorm(x; w): y = x in float32 times rsqrt(mean(y^2 over d) + eps), cast back to x's dtype,
then multiplied by w                       (the product rounded to the dtype again)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["rms_norm"]


@triton.jit
def _rms_norm_kernel(
    x_ptr, update_ptr, sum_ptr, w_ptr, out_ptr, D, eps, HAS_UPDATE: tl.constexpr, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    live = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=live, other=0.0)
    if HAS_UPDATE:
        # residual + update, rounded to the dtype like the eager add
        x = (x.to(tl.float32) + tl.load(update_ptr + row * D + cols, mask=live, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * D + cols, x, mask=live)
    y = x.to(tl.float32)
    y = y * tl.rsqrt(tl.sum(y * y, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=live, other=0.0)
    out = (y.to(x.dtype).to(tl.float32) * w.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * D + cols, out, mask=live)


def rms_norm(x: Tensor, weight: Tensor, eps: float, update: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
    """(x + update or None, RMSNorm(x + update; weight)) for contiguous x, update (..., d)."""
    D = x.shape[-1]
    rows = x.numel() // D
    out = torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))
    summed = torch.empty_like(x) if update is not None else None
    _rms_norm_kernel[(rows,)](
        x,
        update if update is not None else x,
        summed if summed is not None else x,
        weight,
        out,
        D,
        float(eps),
        HAS_UPDATE=update is not None,
        BLOCK_D=triton.next_power_of_2(D),
        num_warps=min(16, max(1, triton.next_power_of_2(D) // 256)),
    )
    return summed, out
