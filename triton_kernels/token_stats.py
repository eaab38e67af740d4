"""SPEC 1, token statistics, in Triton: one streaming pass over each logits row.

    lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax x = smallest index among the maximal z;
    top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
    H_k = -(1/log k) sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i) (0 log 0 = 0);
    H_full = lse - sum_v p_v z_v.

A program streams its logits in tiles of BLOCK_V, two tiles of loads in flight. Each lane keeps its
own running maximum m and the sums S = sum exp(z - m) and D = sum exp(z - m)(z - m) relative to it
(D only for H_full; the names of csrc/cuda/row_stats.cuh), updated element by element with one exp
and no reduction across the program; the lanes are combined once, at the end of the row. An exact
running top-k of (value, index) pairs changes only where an entry reaches its k-th value: each lane
marks such tiles in a bit mask, and once every GROUP tiles one reduction of the masks says which
tiles of the group to read again (from cache) and insert. Then O(k) scalar math gives every output:
p(j) = exp(z_(j) - m) / S, lse = m + log S and H_full = log S - D / S.

Launches, decided by ``stats_launch``: ``_stats_kernel``, one program per row, which streams its
row when the rows fill the GPU; else each row is cut into chunks of whole tiles, ``_stats_chunk_kernel``
(grid rows x chunks) writes every chunk's (m, S, D, top-k) to the workspace and ``_stats_kernel``
(SPLIT) merges the chunks of a row in a fixed order, so results do not depend on scheduling.

``xflow_step.py`` runs the same pass (``summarize_row``, ``finish_row``, ``launch_chunks``) with the
per-row step of SPEC 2 in its rows' epilogue.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .workspace import carve

__all__ = ["StatsLaunch", "finish_row", "launch_chunks", "row_program", "stats_launch", "summarize_row", "token_stats"]

# The running top-k starts with k empty slots holding (-inf, SENTINEL + slot): each loses to every
# real entry, -inf ones too (their indices are smaller), and the slots stay distinct pairs.
# NO_CANDIDATE, the index of "no candidate left", loses even to the empty slots.
SENTINEL = 2**31 - 16
_SENTINEL = tl.constexpr(SENTINEL)
_NO_CANDIDATE = tl.constexpr(2**31 - 1)


@dataclass(frozen=True)
class StatsLaunch:
    """Launch parameters of the statistics pass."""

    block_v: int  # logits per tile of the streaming loop
    group: int  # tiles per top-k decision
    num_warps: int
    chunks: int  # programs per row; 1: a single program streams the whole row
    chunk_len: int  # logits per chunk, whole tiles (the row's length when chunks == 1)


# Multiprocessors assumed for "meta" tensors, which plan GPU launches without a device (an H100 SXM:
# tests/compile_kernels.py compiles the kernels for sm_90 from the launches the wrappers make).
META_MULTIPROCESSORS = 132


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The device's multiprocessor count (a few for the interpreter's CPU tensors)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta":
        return META_MULTIPROCESSORS
    return 4  # the interpreter: a few, so that small test shapes take the split path


def stats_launch(n_rows: int, V: int, device: torch.device) -> StatsLaunch:
    """The one place that tunes the statistics pass.

    On the GPU, tiles of 2048 logits over 8 warps: 8 per thread, one 16-byte load of bf16 (two of
    float32), two tiles of loads in flight, a top-k decision every 4 tiles (registers and spills for
    sm_90: ``python tests/compile_kernels.py``). With fewer than 2 rows per multiprocessor, rows are
    split to give about 4 programs per multiprocessor, in chunks of whole tiles. Under the
    interpreter (CPU tensors) the tiles are small (256) and the groups 2 tiles, so that short test
    rows still take several tiles, groups and chunks.
    """
    interpreted = device.type == "cpu"
    block_v = min(256 if interpreted else 2048, triton.next_power_of_2(V))
    num_warps = max(1, min(8, block_v // 256))
    sms = multiprocessors(device)
    split = 1 if n_rows >= 2 * sms else min(triton.cdiv(V, block_v), triton.cdiv(4 * sms, n_rows))
    n_tiles = triton.cdiv(V, block_v)
    chunk_tiles = triton.cdiv(n_tiles, max(1, min(split, n_tiles)))
    return StatsLaunch(
        block_v=block_v,
        group=2 if interpreted else 4,
        num_warps=num_warps,
        chunks=triton.cdiv(n_tiles, chunk_tiles),
        chunk_len=chunk_tiles * block_v,
    )


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
    0 while m_old = -inf (nothing finite seen yet: those sums are 0, or NaN, whatever the factor)."""
    return tl.where(m_old == float("-inf"), 0.0, m_old - tl.where(m_new == float("-inf"), 0.0, m_new))


@triton.jit
def _bit_or(a, b):
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
    top_v, top_i, last_v, last_i = _topk_empty(K, KP)
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
                    top_v, top_i, last_v, last_i = _topk_insert(top_v, top_i, last_v, last_i, z, idx, valid, K, KP)
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
    """The (m, S, D, top-k slots) of a row from its n_chunks partials (``_stats_chunk_kernel``;
    CHUNKS >= n_chunks, CANDIDATES >= n_chunks * k, powers of two), merged in a fixed order the
    way ``scan_row`` combines its lanes."""
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
    cand_i = tl.load(part_i_ptr + row * n_chunks * K + f, mask=held, other=_SENTINEL)
    top_v, top_i, last_v, last_i = _topk_empty(K, KP)
    # Empty slots of short chunks are no candidates.
    top_v, top_i, last_v, last_i = _topk_insert(
        top_v, top_i, last_v, last_i, cand_v, cand_i, held & (cand_i < _SENTINEL), K, KP
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
    so every id indexes the vocabulary."""
    slot = tl.arange(0, KP)
    live = slot < K
    # Each slot's place in the top-k: how many live slots rank before it.
    before = live[None, :] & _ranks_before(top_v[None, :], top_i[None, :], top_v[:, None], top_i[:, None])
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
    ids = tl.where(top_i < _SENTINEL, top_i, 0).to(tl.int64)

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
    """(m, S, D, top-k slots) of this program's row: streamed whole (``scan_row``), or, on the split
    path (SPLIT), merged from its chunks' partials (``merge_chunks``; the logits are not read)."""
    row = tl.program_id(0).to(tl.int64)
    if SPLIT:
        n_rows = tl.num_programs(0).to(tl.int64)
        return merge_chunks(part_ptr, part_v_ptr, part_i_ptr, row, n_rows, n_chunks, CHUNKS, CANDIDATES, K, KP)
    else:
        row_ptr = row_start(logits_ptr, row, N, stride_b, stride_n)
        return scan_row(row_ptr, 0, V, BLOCK_V, GROUP, K, KP, FULL_ENTROPY)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


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
    finish_row(
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


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def partials(rows: int, k: int, launch: StatsLaunch) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
    """(shape, dtype) of the split path's workspace: (m, S, D) per chunk, and its top-k slots."""
    return (
        ((3, rows, launch.chunks), torch.float32),
        ((rows, launch.chunks, k), torch.float32),
        ((rows, launch.chunks, k), torch.int32),
    )


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
    """The arguments of a per-row kernel (``summarize_row``'s) before its outputs, and its constants:
    on the split path it merges the partials ``parts`` (one warp per row), else it streams its row."""
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
    """SPEC 1 over logits (B, N, V), stride(2) == 1, float32/bfloat16/float16 (csrc/ops.h), inputs as
    ``mdfast.ops`` validated them; ``launch`` overrides ``stats_launch`` (tests force the split path).

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
