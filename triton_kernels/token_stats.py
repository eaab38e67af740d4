"""SPEC 1, token statistics, in Triton: one streaming pass over each logits row.

    lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax x = smallest index among the maximal z;
    top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
    H_k = -(1/log k) sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i) (0 log 0 = 0);
    H_full = lse - sum_v p_v z_v.

The pass itself (running maximum and sums per lane, the exact running top-k, the O(k) scalar math
at the end of a row) is ``row_stats.py``'s; this module holds its kernels and their launcher.

Launches, decided by ``stats_launch``: ``_stats_kernel``, one program per row, which streams its
row when the rows fill the GPU; else each row is cut into chunks of whole tiles, ``_stats_chunk_kernel``
(grid rows x chunks) writes every chunk's (m, S, D, top-k) to the workspace and ``_stats_kernel``
(SPLIT) merges the chunks of a row in a fixed order, so results do not depend on scheduling.

``xflow_step.py`` runs the same pass (``row_statistics``, ``launch_chunks``, ``row_program``) with
the per-row step of SPEC 2 in its rows' epilogue.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .row_stats import row_start, row_statistics, scan_row
from .stats_launch import StatsLaunch, partials, stats_launch
from .workspace import carve

__all__ = ["launch_chunks", "row_program", "token_stats"]


@triton.jit
def _stats_kernel(
    logits_ptr,
    N,
    V,
    stride_b,
    stride_n,
    part_ptr,
    part_v_ptr,
    part_i_ptr,
    n_chunks,
    argmax_ptr,
    probs_ptr,
    ids_ptr,
    lse_ptr,
    margin_ptr,
    entropy_topk_ptr,
    entropy_full_ptr,
    inv_log_k,
    BLOCK_V: tl.constexpr,
    GROUP: tl.constexpr,
    CHUNKS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Grid (rows,): one program per row, which it streams whole or (SPLIT) merges from the chunks."""
    row_statistics(
        logits_ptr,
        N,
        V,
        stride_b,
        stride_n,
        part_ptr,
        part_v_ptr,
        part_i_ptr,
        n_chunks,
        argmax_ptr,
        probs_ptr,
        ids_ptr,
        lse_ptr,
        margin_ptr,
        entropy_topk_ptr,
        entropy_full_ptr,
        inv_log_k,
        BLOCK_V,
        GROUP,
        CHUNKS,
        CANDIDATES,
        K,
        KP,
        FULL_ENTROPY,
        SPLIT,
    )


@triton.jit
def _stats_chunk_kernel(
    logits_ptr,
    N,
    V,
    stride_b,
    stride_n,
    chunk,
    part_ptr,
    part_v_ptr,
    part_i_ptr,
    BLOCK_V: tl.constexpr,
    GROUP: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
):
    """Grid (rows, chunks): the partial statistics of z[c * chunk : (c + 1) * chunk] of a row.

    Writes part[0 | 1 | 2, row, c] = m, S, D and part_v/part_i[row, c, :k] = its top-k slots.
    """
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    lo = c * chunk
    m, S, D, top_v, top_i = scan_row(
        row_start(logits_ptr, row, N, stride_b, stride_n),
        lo,
        tl.minimum(lo + chunk, V),
        BLOCK_V,
        GROUP,
        K,
        KP,
        FULL_ENTROPY,
    )
    at = row * n_chunks + c
    plane = tl.num_programs(0).to(tl.int64) * n_chunks
    tl.store(part_ptr + at, m)
    tl.store(part_ptr + plane + at, S)
    tl.store(part_ptr + 2 * plane + at, D)
    slot = tl.arange(0, KP)
    tl.store(part_v_ptr + at * K + slot, top_v, mask=slot < K)
    tl.store(part_i_ptr + at * K + slot, top_i, mask=slot < K)


def launch_chunks(logits: Tensor, k: int, full_entropy: bool, launch: StatsLaunch, part, part_v, part_i) -> None:
    """The split path's first launch: every chunk's partial statistics into (part, part_v, part_i)."""
    B, N, V = logits.shape
    _stats_chunk_kernel[(B * N, launch.chunks)](
        logits,
        N,
        V,
        logits.stride(0),
        logits.stride(1),
        launch.chunk_len,
        part,
        part_v,
        part_i,
        BLOCK_V=launch.block_v,
        GROUP=launch.group,
        K=k,
        KP=triton.next_power_of_2(k),
        FULL_ENTROPY=full_entropy,
        num_warps=launch.num_warps,
    )


def row_program(logits: Tensor, k: int, launch: StatsLaunch, parts: list[Tensor] | None) -> tuple[tuple, dict]:
    """The arguments of a per-row kernel (``row_statistics``'s) before its outputs, and its constants.

    On the split path the kernel merges the partials ``parts`` (one warp per row), else it streams its row.
    """
    _, N, V = logits.shape
    split = launch.chunks > 1
    part, part_v, part_i = parts if split else (logits,) * 3  # unread without a split
    arguments = (logits, N, V, logits.stride(0), logits.stride(1), part, part_v, part_i, launch.chunks)
    constants = dict(
        BLOCK_V=launch.block_v,
        GROUP=launch.group,
        CHUNKS=triton.next_power_of_2(launch.chunks),
        CANDIDATES=triton.next_power_of_2(launch.chunks * k),
        K=k,
        KP=triton.next_power_of_2(k),
        SPLIT=split,
        num_warps=1 if split else launch.num_warps,
    )
    return arguments, constants


def token_stats(logits: Tensor, k: int, full_entropy: bool, launch: StatsLaunch | None = None) -> list[Tensor]:
    """SPEC 1 over logits (B, N, V): the contract of csrc/ops.h ``token_stats``.

    logits: stride(2) == 1, float32/bfloat16/float16, as ``mdfast.ops`` validated them; ``launch``
    overrides ``stats_launch`` (tests force the split path).
    Returns [argmax (B,N) int64, topk_probs (B,N,k) f32, topk_ids (B,N,k) int64, lse (B,N) f32,
    margin (B,N) f32, entropy_topk (B,N) f32, entropy_full (B,N) f32 or an empty tensor], views of one
    allocation. A row with a NaN or +inf, or all -inf, gets a non-finite lse (NaN where the reference
    may give +inf); its other outputs are then unspecified (ids index the vocabulary). No host
    synchronisation.
    """
    B, N, V = logits.shape
    rows = B * N
    launch = launch or stats_launch(rows, V, logits.device)
    split = launch.chunks > 1
    f32, i64 = torch.float32, torch.int64
    views = carve(
        logits.device,
        ((B, N), i64),
        ((B, N, k), f32),
        ((B, N, k), i64),
        ((B, N), f32),
        ((B, N), f32),
        ((B, N), f32),
        ((B, N) if full_entropy else (0,), f32),
        *(partials(rows, k, launch) if split else ()),
    )
    results, parts = views[:7], views[7:]
    if rows == 0:
        return results
    if split:
        launch_chunks(logits, k, full_entropy, launch, *parts)
    arguments, constants = row_program(logits, k, launch, parts)
    _stats_kernel[(rows,)](*arguments, *results, 1.0 / math.log(k), FULL_ENTROPY=full_entropy, **constants)
    return results
