"""The statistics of one logits row in one streaming pass, as @triton.jit pieces (SPEC 1).

A program streams its logits in tiles of BLOCK_V, two tiles of loads in flight. Each lane keeps its
own running maximum m and the sums S = sum exp(z - m) and D = sum exp(z - m)(z - m) relative to it
(D only for H_full; the names of csrc/cuda/row_stats.cuh), updated element by element with one exp
and no reduction across the program; the lanes are combined once, at the end of the row. An exact
running top-k of (value, index) pairs (``topk.py``) changes only where an entry reaches its k-th
value: each lane marks such tiles in a bit mask, and once every GROUP tiles one reduction of the
masks says which tiles of the group to read again (from cache) and insert. Then O(k) scalar math
gives every output: p(j) = exp(z_(j) - m) / S, lse = m + log S and H_full = log S - D / S.

``scan_row`` streams a row (or a chunk of one), ``merge_chunks`` combines the partials of a split
row, ``row_statistics`` is a whole row's statistics pass with its stores, shared by the kernels of
``token_stats.py`` and ``step_kernel.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .topk import SENTINEL, ranks_before, topk_empty, topk_insert

__all__ = ["finish_row", "merge_chunks", "row_start", "row_statistics", "scan_row", "summarize_row"]


@triton.jit
def _rescale_log(m_old, m_new):
    """log of the factor exp(m_old - m_new) that moves sums kept relative to m_old onto m_new.

    0 while m_old = -inf (nothing finite seen yet: those sums are 0, or NaN, whatever the factor).
    """
    return tl.where(m_old == float("-inf"), 0.0, m_old - tl.where(m_new == float("-inf"), 0.0, m_new))


@triton.jit
def _bit_or(a, b):
    """a | b: the combine function of a reduction of bit masks."""
    return a | b


@triton.jit
def scan_row(
    row_ptr,
    lo,
    hi,
    BLOCK_V: tl.constexpr,
    GROUP: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
):
    """One streaming pass over z[lo:hi] of the row at ``row_ptr`` (any float dtype, read as float32).

    Returns m = max z, S = sum exp(z - m), D = sum exp(z - m)(z - m) (0 unless FULL_ENTROPY) and the
    unsorted top-k slots. Per lane, an entry z either stays below the lane's maximum m (S += e^(z - m),
    D += e^(z - m)(z - m)) or becomes it (S' = S e^(m - z) + 1, D' = (D + (m - z) S) e^(m - z)): one
    exp either way. Entries z = -inf add nothing (SPEC: "entries with z_v = -inf have p_v = 0 and add
    nothing"), never NaN; a NaN reaches S through its exp, a +inf makes S NaN when the lanes are
    combined (e^(inf - inf)): lse is not finite exactly for the rows ops.h names.
    """
    offs = tl.arange(0, BLOCK_V)
    m_lane = tl.full([BLOCK_V], float("-inf"), tl.float32)
    S_lane = tl.zeros([BLOCK_V], tl.float32)
    D_lane = tl.zeros([BLOCK_V], tl.float32)
    top_v, top_i, last_v, last_i = topk_empty(K, KP)
    # Two tiles of loads in flight: each step loads the tile two ahead before working on this one.
    ahead = tl.load(row_ptr + lo + offs, mask=lo + offs < hi, other=float("-inf"))
    after = tl.load(row_ptr + lo + BLOCK_V + offs, mask=lo + BLOCK_V + offs < hi, other=float("-inf"))
    for group_start in range(lo, hi, GROUP * BLOCK_V):
        hits = tl.zeros([BLOCK_V], tl.int32)  # bit j: this lane's entry of tile j may enter the top-k
        for j in range(GROUP):
            idx = group_start + j * BLOCK_V + offs
            z = ahead.to(tl.float32)
            ahead = after
            after = tl.load(row_ptr + 2 * BLOCK_V + idx, mask=2 * BLOCK_V + idx < hi, other=float("-inf"))
            grow = z > m_lane  # never for NaN
            # x = -|z - m|: -inf for z = -inf, or while m = -inf (each side computed without -inf - (-inf))
            x = tl.where(grow, m_lane - tl.where(grow, z, 0.0), z - tl.where(m_lane == float("-inf"), 0.0, m_lane))
            e = tl.exp(x)
            if FULL_ENTROPY:
                x_finite = tl.where(e > 0.0, x, 0.0)  # e^x x = 0 at x = -inf, not NaN
                D_lane = tl.where(grow, (D_lane + x_finite * S_lane) * e, D_lane + e * x_finite)
            S_lane = tl.where(grow, S_lane * e + 1.0, S_lane + e)
            m_lane = tl.where(grow, z, m_lane)
            hits |= tl.where((idx < hi) & (z >= last_v), 1 << j, 0)
        # Only the tiles holding an entry >= the k-th value so far can change the top-k: read them
        # again (from cache) and insert their candidates, in tile order.
        tiles = tl.reduce(hits, 0, _bit_or)
        if tiles != 0:
            for j in range(GROUP):
                if ((tiles >> j) & 1) != 0:
                    idx = group_start + j * BLOCK_V + offs
                    valid = idx < hi
                    z = tl.load(row_ptr + idx, mask=valid, other=float("-inf")).to(tl.float32)
                    top_v, top_i, last_v, last_i = topk_insert(top_v, top_i, last_v, last_i, z, idx, valid, K, KP)
    m = tl.max(m_lane, 0)
    shift = _rescale_log(m_lane, m)
    scale = tl.exp(shift)
    S = tl.sum(S_lane * scale, 0)
    D = tl.sum((D_lane + shift * S_lane) * scale, 0) if FULL_ENTROPY else tl.zeros([], tl.float32)
    return m, S, D, top_v, top_i


@triton.jit
def merge_chunks(
    part_ptr,
    part_v_ptr,
    part_i_ptr,
    row,
    n_rows,
    n_chunks,
    CHUNKS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
):
    """The (m, S, D, top-k slots) of a row from its n_chunks partials, merged in a fixed order.

    The partials are ``_stats_chunk_kernel``'s; CHUNKS >= n_chunks, CANDIDATES >= n_chunks * k,
    powers of two. They combine the way ``scan_row`` combines its lanes.
    """
    plane = n_rows * n_chunks
    c = tl.arange(0, CHUNKS)
    at = row * n_chunks + c
    live = c < n_chunks
    m_c = tl.load(part_ptr + at, mask=live, other=float("-inf"))
    S_c = tl.load(part_ptr + plane + at, mask=live, other=0.0)
    D_c = tl.load(part_ptr + 2 * plane + at, mask=live, other=0.0)
    m = tl.max(m_c, 0)
    shift = _rescale_log(m_c, m)
    scale = tl.exp(shift)
    S = tl.sum(S_c * scale, 0)
    D = tl.sum((D_c + shift * S_c) * scale, 0)

    f = tl.arange(0, CANDIDATES)
    held = f < n_chunks * K
    cand_v = tl.load(part_v_ptr + row * n_chunks * K + f, mask=held, other=float("-inf"))
    cand_i = tl.load(part_i_ptr + row * n_chunks * K + f, mask=held, other=SENTINEL)
    top_v, top_i, last_v, last_i = topk_empty(K, KP)
    # Empty slots of short chunks are no candidates.
    top_v, top_i, last_v, last_i = topk_insert(
        top_v, top_i, last_v, last_i, cand_v, cand_i, held & (cand_i < SENTINEL), K, KP
    )
    return m, S, D, top_v, top_i


@triton.jit
def finish_row(
    row,
    m,
    S,
    D,
    top_v,
    top_i,
    argmax_ptr,
    probs_ptr,
    ids_ptr,
    lse_ptr,
    margin_ptr,
    entropy_topk_ptr,
    entropy_full_ptr,
    inv_log_k,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
):
    """The O(k) scalar math of SPEC 1 from a row's m, S, D and top-k slots, and its stores.

    Returns (p(1), lse). An empty slot (only in a row holding NaN, whose lse is NaN) reads id 0,
    so every id indexes the vocabulary.
    """
    slot = tl.arange(0, KP)
    live = slot < K
    # Each slot's place in the top-k: how many live slots rank before it.
    before = live[None, :] & ranks_before(top_v[None, :], top_i[None, :], top_v[:, None], top_i[:, None])
    rank = tl.sum(before.to(tl.int32), 1)
    # p(j) = exp(z_(j) - lse) = exp(z_(j) - m) / S
    e = tl.exp(top_v - tl.where(m == float("-inf"), 0.0, m))
    p = e / S
    lse = m + tl.log(S)
    first = rank == 0
    p1 = tl.sum(tl.where(first, p, 0.0), 0)
    p2 = tl.sum(tl.where(rank == 1, p, 0.0), 0)
    # H_k = -(1/log k) * sum_{j<=k} q_j log q_j,  q_j = p(j) / sum_{i<=k} p(i)  (0 log 0 = 0)
    q = e / tl.sum(tl.where(live, e, 0.0), 0)
    entropy_topk = -tl.sum(tl.where(live, q * tl.log(tl.where(q > 0.0, q, 1.0)), 0.0), 0) * inv_log_k
    ids = tl.where(top_i < SENTINEL, top_i, 0).to(tl.int64)

    tl.store(argmax_ptr + row, tl.sum(tl.where(first, ids, 0), 0))
    tl.store(probs_ptr + row * K + rank, p, mask=live)
    tl.store(ids_ptr + row * K + rank, ids, mask=live)
    tl.store(lse_ptr + row, lse)
    tl.store(margin_ptr + row, p1 - p2)  # margin = p(1) - p(2)
    tl.store(entropy_topk_ptr + row, entropy_topk)
    if FULL_ENTROPY:
        # H_full = lse - sum_v p_v z_v = (m + log S) - (m + D / S)
        tl.store(entropy_full_ptr + row, tl.log(S) - D / S)
    return p1, lse


@triton.jit
def row_start(logits_ptr, row, N, stride_b, stride_n):
    """Address of row (b, n) = (row // N, row % N), int64 offsets (b * stride_b can pass 2^31)."""
    return logits_ptr + (row // N) * stride_b + (row % N) * stride_n


@triton.jit
def summarize_row(
    logits_ptr,
    N,
    V,
    stride_b,
    stride_n,
    part_ptr,
    part_v_ptr,
    part_i_ptr,
    n_chunks,
    BLOCK_V: tl.constexpr,
    GROUP: tl.constexpr,
    CHUNKS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    FULL_ENTROPY: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """(m, S, D, top-k slots) of this program's row.

    Streamed whole (``scan_row``), or, on the split path (SPLIT), merged from its chunks' partials
    (``merge_chunks``; the logits are not read).
    """
    row = tl.program_id(0).to(tl.int64)
    if SPLIT:
        n_rows = tl.num_programs(0).to(tl.int64)
        return merge_chunks(part_ptr, part_v_ptr, part_i_ptr, row, n_rows, n_chunks, CHUNKS, CANDIDATES, K, KP)
    else:
        row_ptr = row_start(logits_ptr, row, N, stride_b, stride_n)
        return scan_row(row_ptr, 0, V, BLOCK_V, GROUP, K, KP, FULL_ENTROPY)


@triton.jit
def row_statistics(
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
    """SPEC 1 for this program's row (``summarize_row``, then ``finish_row``): its stores; returns (p(1), lse)."""
    m, S, D, top_v, top_i = summarize_row(
        logits_ptr,
        N,
        V,
        stride_b,
        stride_n,
        part_ptr,
        part_v_ptr,
        part_i_ptr,
        n_chunks,
        BLOCK_V,
        GROUP,
        CHUNKS,
        CANDIDATES,
        K,
        KP,
        FULL_ENTROPY,
        SPLIT,
    )
    return finish_row(
        tl.program_id(0).to(tl.int64),
        m,
        S,
        D,
        top_v,
        top_i,
        argmax_ptr,
        probs_ptr,
        ids_ptr,
        lse_ptr,
        margin_ptr,
        entropy_topk_ptr,
        entropy_full_ptr,
        inv_log_k,
        K,
        KP,
        FULL_ENTROPY,
    )
