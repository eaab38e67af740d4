"""One allocation for every tensor a launcher writes: typed views carved out of a single buffer.

An eager call on a small problem is bound by the host, and each ``torch.empty`` costs a trip through
the caching allocator; a launcher instead asks for all its outputs and intermediates at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["carve"]

_ALIGN = 16  # bytes: every view starts 16-byte aligned (vector loads, Triton's pointer specialisation)


def carve(device: torch.device, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[Tensor]:
    """Contiguous tensors of the given (shape, dtype), in order, as views of one new allocation.

    Each view starts at a multiple of 16 bytes; the views never overlap. The buffer lives as long
    as any of them.
    """
    offsets, total = [], 0
    for shape, dtype in specs:
        offsets.append(total)
        total += -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN
    buffer = torch.empty(max(total, _ALIGN) // 8, dtype=torch.int64, device=device)
    by_dtype: dict[torch.dtype, Tensor] = {}
    views = []
    for (shape, dtype), offset in zip(specs, offsets):
        if dtype not in by_dtype:
            by_dtype[dtype] = buffer.view(dtype)
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        views.append(by_dtype[dtype].as_strided(shape, strides, offset // dtype.itemsize))
    return views
