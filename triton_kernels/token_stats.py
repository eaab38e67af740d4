"""SPEC 1, token statistics, in Triton: one streaming pass over each logits row.

    lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax x = smallest index among the maximal z;
    top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
    H_k = -(1/log k) sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i) (0 log 0 = 0);
    H_full = lse - sum_v p_v z_v.

A program streams its logits in tiles of BLOCK_V, keeping a running maximum m, the sums
S = sum exp(z - m) and T = sum exp(z - m)(z - m) (rescaled when m grows; T only for H_full), and an
exact running top-k of (value, index) pairs. Then O(k) scalar math gives every output:
p(j) = exp(z_(j) - m) / S, lse = m + log S and H_full = log S - T / S.

Launches, decided by ``stats_config``:
- one program per row (``_stats_row_kernel``) when the rows fill the GPU;
- else each row is cut into ``split`` chunks of whole tiles: ``_stats_chunk_kernel`` (grid rows x
  chunks) writes every chunk's (m, S, T, top-k) to a workspace and ``_stats_merge_kernel`` (grid
  rows) merges the chunks of a row in a fixed order, so results do not depend on scheduling.

``xflow.py`` launches the same kernels through ``compute_token_stats``, with a flag that rows whose
lse is not finite raise, for the kernels after it to read without a host synchronisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["token_stats"]

# The running top-k starts with k empty slots holding (-inf, SENTINEL + slot): each loses to every
# real entry, -inf ones too (their indices are smaller), and the slots stay distinct pairs.
# NO_CANDIDATE, the index of "no candidate left", loses even to the empty slots.
SENTINEL = 2**31 - 16
_SENTINEL = tl.constexpr(SENTINEL)
_NO_CANDIDATE = tl.constexpr(2**31 - 1)


@dataclass(frozen=True)
class StatsConfig:
    """Launch parameters of the statistics pass."""

    block_v: int  # logits per tile of the streaming loop
    num_warps: int
    split: int  # programs per row; 1: a single program streams the whole row


# Multiprocessors assumed for "meta" tensors, which plan GPU launches without a device (an H100 SXM:
# tests/compile_kernels.py compiles the kernels for sm_90 from the launches the wrappers make).
META_MULTIPROCESSORS = 132


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta":
        return META_MULTIPROCESSORS
    return 4  # the interpreter: a few, so that small test shapes take the split path


def stats_config(n_rows: int, V: int, device: torch.device) -> StatsConfig:
    """The one place that tunes the statistics pass.

    On the GPU, tiles of 2048 logits over 8 warps: 8 per thread, one 16-byte load of bf16 (two of
    float32), with the next tile in flight; 88 registers for sm_90 (``tests/compile_kernels.py``,
    Triton 3.9), so 2 programs fit on a multiprocessor. With fewer than 2 rows per multiprocessor,
    rows are split to give about 4 programs per multiprocessor, in chunks of whole tiles. Under the
    interpreter (CPU tensors) the tiles are small (256) so that short test rows still take several tiles and chunks.
    """
    block_v = min(256 if device.type == "cpu" else 2048, triton.next_power_of_2(V))
    num_warps = max(1, min(8, block_v // 256))
    sms = _multiprocessors(device)
    split = 1 if n_rows >= 2 * sms else min(triton.cdiv(V, block_v), triton.cdiv(4 * sms, n_rows))
    return StatsConfig(block_v=block_v, num_warps=num_warps, split=split)


# --------------------------------------------------------------------------------------------
# Shared @triton.jit pieces
# --------------------------------------------------------------------------------------------


@triton.jit
def _ranks_before(v, i, w, j):
    """(v, i) ranks before (w, j) in SPEC 1's order: "the k largest p, descending, ties broken by
    smaller index" (p is monotone in z, so logits rank as their probabilities)."""
    return (v > w) | ((v == w) & (i < j))


@triton.jit
def _topk_empty(K: tl.constexpr, KP: tl.constexpr):
    """k empty slots (padded to KP, a power of two) and the last-ranked of them."""
    slot = tl.arange(0, KP)
    top_v = tl.full([KP], float("-inf"), tl.float32)
    top_i = _SENTINEL + slot
    return top_v, top_i, tl.full([], float("-inf"), tl.float32), tl.full([], _SENTINEL + K - 1, tl.int32)


@triton.jit
def _topk_last(top_v, top_i, K: tl.constexpr, KP: tl.constexpr):
    """The last-ranked (smallest value, then largest index) of the k live slots."""
    live = tl.arange(0, KP) < K
    last_v = tl.min(tl.where(live, top_v, float("inf")), 0)
    last_i = tl.max(tl.where(live & (top_v == last_v), top_i, -1), 0)
    return last_v, last_i


@triton.jit
def _best_after(vals, idx, valid, after_v, after_i):
    """The first-ranked candidate among (vals, idx)[valid] that ranks after (after_v, after_i);
    (-inf, NO_CANDIDATE) when none is left."""
    rest = valid & _ranks_before(after_v, after_i, vals, idx)
    best_v = tl.max(tl.where(rest, vals, float("-inf")), 0)
    best_i = tl.min(tl.where(rest & (vals == best_v), idx, _NO_CANDIDATE), 0)
    return best_v, best_i


@triton.jit
def _topk_insert(top_v, top_i, last_v, last_i, vals, idx, valid, K: tl.constexpr, KP: tl.constexpr):
    """Merges the candidates (vals, idx)[valid] (distinct indices) into the running top-k.

    Candidates are taken best first; each replaces the last-ranked slot while it ranks before it,
    at most k times: once one loses, every later one loses too. Only scalars are carried from one
    candidate to the next, so the tile costs no extra registers.
    """
    cand_v, cand_i = _best_after(vals, idx, valid, float("inf"), -1)
    n = 0
    while (n < K) & _ranks_before(cand_v, cand_i, last_v, last_i):
        replaced = (top_v == last_v) & (top_i == last_i)
        top_v = tl.where(replaced, cand_v, top_v)
        top_i = tl.where(replaced, cand_i, top_i)
        last_v, last_i = _topk_last(top_v, top_i, K, KP)
        cand_v, cand_i = _best_after(vals, idx, valid, cand_v, cand_i)
        n += 1
    return top_v, top_i, last_v, last_i


@triton.jit
def _rescale_log(m_old, m_new):
    """log of the factor exp(m_old - m_new) that moves sums kept relative to m_old onto m_new;
    0 while m_old = -inf (nothing finite seen yet: those sums are 0 whatever the factor)."""
    return tl.where(m_old == float("-inf"), 0.0, m_old - m_new)


@triton.jit
def _scan(row_ptr, lo, hi, BLOCK_V: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, FULL_ENTROPY: tl.constexpr):
    """One streaming pass over z[lo:hi] of the row at ``row_ptr`` (any float dtype, read as float32).

    Returns m = max z, S = sum exp(z - m), T = sum exp(z - m)(z - m) (0 unless FULL_ENTROPY) and the
    unsorted top-k slots. S and T are kept per lane and summed once at the end; when m grows to
    m', S' = S e^(m - m') and T' = (T + (m - m') S) e^(m - m'). Entries z = -inf add nothing
    (SPEC: "entries with z_v = -inf have p_v = 0 and add nothing"), never NaN.
    """
    offs = tl.arange(0, BLOCK_V)
    m = tl.full([], float("-inf"), tl.float32)
    s_lane = tl.zeros([BLOCK_V], tl.float32)
    t_lane = tl.zeros([BLOCK_V], tl.float32)
    top_v, top_i, last_v, last_i = _topk_empty(K, KP)
    # Each iteration loads the next tile before working on this one (two tiles in flight).
    ahead = tl.load(row_ptr + lo + offs, mask=lo + offs < hi, other=float("-inf"))
    for start in range(lo, hi, BLOCK_V):
        idx = start + offs
        valid = idx < hi
        z = ahead.to(tl.float32)
        ahead = tl.load(row_ptr + BLOCK_V + idx, mask=BLOCK_V + idx < hi, other=float("-inf"))
        tile_max = tl.max(z, 0)
        m_new = tl.maximum(m, tile_max)
        shift = _rescale_log(m, m_new)
        scale = tl.exp(shift)
        z_rel = z - tl.where(m_new == float("-inf"), 0.0, m_new)
        e = tl.exp(z_rel)
        if FULL_ENTROPY:
            t_lane = (t_lane + shift * s_lane) * scale + e * tl.where(e > 0.0, z_rel, 0.0)
        s_lane = s_lane * scale + e
        m = m_new
        # Only a tile that reaches the k-th value so far can change the top-k.
        if tile_max >= last_v:
            top_v, top_i, last_v, last_i = _topk_insert(top_v, top_i, last_v, last_i, z, idx, valid, K, KP)
    return m, tl.sum(s_lane, 0), tl.sum(t_lane, 0), top_v, top_i


@triton.jit
def _finish_row(
    row,
    m,
    s,
    t,
    top_v,
    top_i,
    argmax_ptr,
    probs_ptr,
    ids_ptr,
    lse_ptr,
    margin_ptr,
    entropy_topk_ptr,
    entropy_full_ptr,
    bad_ptr,
    inv_log_k,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
    FLAG_BAD: tl.constexpr,
):
    """The O(k) scalar math of SPEC 1 from a row's m, S, T and top-k slots, and its stores."""
    slot = tl.arange(0, KP)
    live = slot < K
    # Each slot's place in the top-k: how many live slots rank before it.
    before = live[None, :] & _ranks_before(top_v[None, :], top_i[None, :], top_v[:, None], top_i[:, None])
    rank = tl.sum(before.to(tl.int32), 1)
    # p(j) = exp(z_(j) - lse) = exp(z_(j) - m) / S
    e = tl.exp(top_v - tl.where(m == float("-inf"), 0.0, m))
    p = e / s
    lse = m + tl.log(s)
    first = rank == 0
    p1 = tl.sum(tl.where(first, p, 0.0), 0)
    p2 = tl.sum(tl.where(rank == 1, p, 0.0), 0)
    # H_k = -(1/log k) * sum_{j<=k} q_j log q_j,  q_j = p(j) / sum_{i<=k} p(i)  (0 log 0 = 0)
    q = e / tl.sum(tl.where(live, e, 0.0), 0)
    entropy_topk = -tl.sum(tl.where(live, q * tl.log(tl.where(q > 0.0, q, 1.0)), 0.0), 0) * inv_log_k

    tl.store(argmax_ptr + row, tl.sum(tl.where(first, top_i, 0), 0).to(tl.int64))
    tl.store(probs_ptr + row * K + rank, p, mask=live)
    tl.store(ids_ptr + row * K + rank, top_i.to(tl.int64), mask=live)
    tl.store(lse_ptr + row, lse)
    tl.store(margin_ptr + row, p1 - p2)  # margin = p(1) - p(2)
    tl.store(entropy_topk_ptr + row, entropy_topk)
    if FULL_ENTROPY:
        # H_full = lse - sum_v p_v z_v = (m + log S) - (m + T / S)
        tl.store(entropy_full_ptr + row, tl.log(s) - t / s)
    if FLAG_BAD:
        # A NaN or +inf in the row, or a row all -inf: later kernels must not write anything.
        tl.store(bad_ptr, 1, mask=(lse != lse) | (tl.abs(lse) == float("inf")))


@triton.jit
def _row_start(logits_ptr, row, N, stride_b, stride_n):
    """Address of row (b, n) = (row // N, row % N), int64 offsets (b * stride_b can pass 2^31)."""
    return logits_ptr + (row // N) * stride_b + (row % N) * stride_n


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _stats_row_kernel(
    logits_ptr,
    N,
    V,
    stride_b,
    stride_n,
    argmax_ptr,
    probs_ptr,
    ids_ptr,
    lse_ptr,
    margin_ptr,
    entropy_topk_ptr,
    entropy_full_ptr,
    bad_ptr,
    inv_log_k,
    BLOCK_V: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
    FLAG_BAD: tl.constexpr,
):
    """Grid (rows,): one program streams one whole row."""
    row = tl.program_id(0).to(tl.int64)
    m, s, t, top_v, top_i = _scan(
        _row_start(logits_ptr, row, N, stride_b, stride_n), 0, V, BLOCK_V, K, KP, FULL_ENTROPY
    )
    _finish_row(
        row,
        m,
        s,
        t,
        top_v,
        top_i,
        argmax_ptr,
        probs_ptr,
        ids_ptr,
        lse_ptr,
        margin_ptr,
        entropy_topk_ptr,
        entropy_full_ptr,
        bad_ptr,
        inv_log_k,
        K,
        KP,
        FULL_ENTROPY,
        FLAG_BAD,
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
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
):
    """Grid (rows, chunks): the partial statistics of z[c * chunk : (c + 1) * chunk] of a row.

    Writes part[0 | 1 | 2, row, c] = m, S, T and part_v/part_i[row, c, :k] = its top-k slots.
    """
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    lo = c * chunk
    m, s, t, top_v, top_i = _scan(
        _row_start(logits_ptr, row, N, stride_b, stride_n), lo, tl.minimum(lo + chunk, V), BLOCK_V, K, KP, FULL_ENTROPY
    )
    at = row * n_chunks + c
    plane = tl.num_programs(0).to(tl.int64) * n_chunks
    tl.store(part_ptr + at, m)
    tl.store(part_ptr + plane + at, s)
    tl.store(part_ptr + 2 * plane + at, t)
    slot = tl.arange(0, KP)
    tl.store(part_v_ptr + at * K + slot, top_v, mask=slot < K)
    tl.store(part_i_ptr + at * K + slot, top_i, mask=slot < K)


@triton.jit
def _stats_merge_kernel(
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
    bad_ptr,
    inv_log_k,
    CHUNKS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
    FLAG_BAD: tl.constexpr,
):
    """Grid (rows,): merges the n_chunks partials of a row (CHUNKS >= n_chunks, CANDIDATES >=
    n_chunks * k, powers of two) the way ``_scan`` merges its tiles, in a fixed order."""
    row = tl.program_id(0).to(tl.int64)
    plane = tl.num_programs(0).to(tl.int64) * n_chunks
    c = tl.arange(0, CHUNKS)
    at = row * n_chunks + c
    live = c < n_chunks
    m_c = tl.load(part_ptr + at, mask=live, other=float("-inf"))
    s_c = tl.load(part_ptr + plane + at, mask=live, other=0.0)
    t_c = tl.load(part_ptr + 2 * plane + at, mask=live, other=0.0)
    m = tl.max(m_c, 0)
    shift = _rescale_log(m_c, m)
    scale = tl.exp(shift)
    s = tl.sum(s_c * scale, 0)
    t = tl.sum((t_c + shift * s_c) * scale, 0)

    f = tl.arange(0, CANDIDATES)
    held = f < n_chunks * K
    cand_v = tl.load(part_v_ptr + row * n_chunks * K + f, mask=held, other=float("-inf"))
    cand_i = tl.load(part_i_ptr + row * n_chunks * K + f, mask=held, other=_SENTINEL)
    top_v, top_i, last_v, last_i = _topk_empty(K, KP)
    # Empty slots of short chunks are no candidates.
    top_v, top_i, last_v, last_i = _topk_insert(
        top_v, top_i, last_v, last_i, cand_v, cand_i, held & (cand_i < _SENTINEL), K, KP
    )
    _finish_row(
        row,
        m,
        s,
        t,
        top_v,
        top_i,
        argmax_ptr,
        probs_ptr,
        ids_ptr,
        lse_ptr,
        margin_ptr,
        entropy_topk_ptr,
        entropy_full_ptr,
        bad_ptr,
        inv_log_k,
        K,
        KP,
        FULL_ENTROPY,
        FLAG_BAD,
    )


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def compute_token_stats(
    logits: Tensor, k: int, full_entropy: bool, bad: Tensor | None = None, config: StatsConfig | None = None
) -> list[Tensor]:
    """``token_stats``, and what ``xflow_step`` launches: ``bad`` (a zeroed int32 tensor of one
    element), when given, is set to 1 by every row whose lse is not finite; ``config`` overrides
    ``stats_config`` (tests use it to force the split path)."""
    if logits.dim() != 3 or logits.stride(2) != 1:
        raise ValueError(f"token_stats: logits must be (B, N, V) with stride(2) == 1, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"token_stats: logits must be float32, bfloat16 or float16, got {logits.dtype}")
    B, N, V = logits.shape
    if not 2 <= k <= 8 or not k <= V < SENTINEL:
        raise ValueError(f"token_stats: need 2 <= k <= 8 and k <= V < {SENTINEL}, got k={k}, V={V}")
    rows = B * N
    device = logits.device
    f32 = dict(device=device, dtype=torch.float32)
    argmax = torch.empty((B, N), device=device, dtype=torch.int64)
    probs = torch.empty((B, N, k), **f32)
    ids = torch.empty((B, N, k), device=device, dtype=torch.int64)
    lse = torch.empty((B, N), **f32)
    margin = torch.empty((B, N), **f32)
    entropy_topk = torch.empty((B, N), **f32)
    entropy_full = torch.empty((B, N) if full_entropy else (0,), **f32)
    results = [argmax, probs, ids, lse, margin, entropy_topk, entropy_full]
    if rows == 0:
        return results

    cfg = config or stats_config(rows, V, device)
    n_tiles = triton.cdiv(V, cfg.block_v)
    chunk_tiles = triton.cdiv(n_tiles, max(1, min(cfg.split, n_tiles)))
    n_chunks = triton.cdiv(n_tiles, chunk_tiles)
    outputs = (argmax, probs, ids, lse, margin, entropy_topk, entropy_full, lse if bad is None else bad)
    common = dict(K=k, KP=triton.next_power_of_2(k), FULL_ENTROPY=full_entropy)
    finish = dict(FLAG_BAD=bad is not None, **common)
    strides = (logits.stride(0), logits.stride(1))
    if n_chunks == 1:
        _stats_row_kernel[(rows,)](
            logits,
            N,
            V,
            *strides,
            *outputs,
            1.0 / math.log(k),
            BLOCK_V=cfg.block_v,
            num_warps=cfg.num_warps,
            **finish,
        )
        return results
    part = torch.empty((3, rows, n_chunks), **f32)
    part_v = torch.empty((rows, n_chunks, k), **f32)
    part_i = torch.empty((rows, n_chunks, k), device=device, dtype=torch.int32)
    _stats_chunk_kernel[(rows, n_chunks)](
        logits,
        N,
        V,
        *strides,
        chunk_tiles * cfg.block_v,
        part,
        part_v,
        part_i,
        BLOCK_V=cfg.block_v,
        num_warps=cfg.num_warps,
        **common,
    )
    _stats_merge_kernel[(rows,)](
        part,
        part_v,
        part_i,
        n_chunks,
        *outputs,
        1.0 / math.log(k),
        CHUNKS=triton.next_power_of_2(n_chunks),
        CANDIDATES=triton.next_power_of_2(n_chunks * k),
        num_warps=1,
        **finish,
    )
    return results


def token_stats(logits: Tensor, k: int, full_entropy: bool) -> list[Tensor]:
    """SPEC 1 over logits (B, N, V), stride(2) == 1, float32/bfloat16/float16 (csrc/ops.h).

    Returns [argmax (B,N) int64, topk_probs (B,N,k) f32, topk_ids (B,N,k) int64, lse (B,N) f32,
    margin (B,N) f32, entropy_topk (B,N) f32, entropy_full (B,N) f32 or an empty tensor].
    A row with a NaN or +inf, or all -inf, gets a non-finite lse (NaN where the reference may give
    +inf); its other outputs are then unspecified. No host synchronisation.
    """
    return compute_token_stats(logits, k, full_entropy)
