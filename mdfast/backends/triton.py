"""The Triton backend: the kernels of ``triton_kernels/`` (installed as ``mdfast.triton_kernels``).

One function per op with the signatures of the compiled extensions (csrc/ops.h, csrc/bindings.cpp),
so that ``KernelBackend`` drives this module and an extension alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdfast.reference import rope_inv_freq
from mdfast.triton_kernels.rmsnorm import rms_norm
from mdfast.triton_kernels.rope import rope_ as _rope
from mdfast.triton_kernels.swiglu import swiglu
from mdfast.triton_kernels.token_stats import token_stats
from mdfast.triton_kernels.xflow_step import xflow_step

__all__ = ["rms_norm", "rope_", "swiglu", "token_stats", "xflow_step"]

_inv_freq: dict[tuple[int, float, torch.device], Tensor] = {}


def rope_(x: Tensor, theta: float) -> Tensor:
    """RoPE in place on x (B, L, H, hd), with inv_freq_j = theta^(-2j/hd) computed once per (hd, theta, device).

    ``mdfast.reference.rope_inv_freq`` computes it (the eager evaluation's float32 values) and it is
    kept: the first, eager call creates it, so a CUDA graph captured later replays only the kernel.
    """
    key = (x.shape[-1], theta, x.device)
    inv_freq = _inv_freq.get(key)
    if inv_freq is None:
        inv_freq = _inv_freq[key] = rope_inv_freq(x.shape[-1], theta, x.device)
    return _rope(x, inv_freq)
